"""DPRoPE planning: per frequency pair, choose the strategy that disturbs its angle distribution least.

The rotary angles of pair ``i`` over the pre-training positions ``[0, L)`` form a histogram
``P_L^i`` over ``bins`` equal slices of the turn. A strategy gives the pair a new frequency; its
angles over the target positions ``[0, L')`` form ``P_L'^i``. The disturbance is
``D_i = KL(P_L^i || P_L'^i)`` with the public code's smoothing. Pair ``i`` is interpolated iff
``D_i(extrapolation) - D_i(interpolation) > threshold`` (the paper's eq. 9), or — the paper's
other rule — the ``num_interpolated_dims / 2`` pairs with the largest such gain are interpolated.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import phase
from .errors import InvalidType, InvalidValue
from .ops.checks import check_attention_factor
from .strategies import BASELINES, STRATEGIES, default_inv_freq, strategy_table

SMOOTHING = 6.103515625e-05  # float16 tiny: the public code's initial count per bin
MAX_POSITION = 1 << 62  # lengths stay far below 2**63, where int64 positions end
PRECISIONS = ("exact", "reference")
DIRECTIONS = ("forward", "reverse")
SELECTIONS = ("paper", "robust")
ATTENTION_RULES = ("yarn", "entropy", "none")  # named attention factors (see resolve_attention_factor)
DEFAULT_ATTENTION_FACTOR = "yarn"  # chosen by measurement: README "Real model", benchmarks/results/
DEFAULT_RAMP = 4.0  # the robust cutoff made soft over a factor 4 of turns (2 each side); measured likewise


def json_number(value: float | None):
    """``value`` as strict JSON takes it: JSON has no infinity, so ``inf`` / ``-inf`` (a threshold that
    interpolates nothing / everything) become the strings ``"inf"`` / ``"-inf"``."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def number_from_json(value):
    """:func:`json_number`'s inverse: ``"inf"`` / ``"-inf"`` as floats, anything else as it is."""
    return float(value) if value in ("inf", "-inf") else value


def yarn_attention_factor(factor: float) -> float:
    """YaRN's attention factor (temperature) for an extension by ``factor``: ``0.1 ln(s) + 1`` (1 for s <= 1),
    the value transformers' ``yarn`` rope type multiplies cos and sin by."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def entropy_attention_factor(factor: float, original_max_position: int) -> float:
    """The factor that keeps attention's entropy scale over ``s L`` positions what it was over ``L``:
    logits times ``ln(s L) / ln(L)``, so ``sqrt(1 + ln(s) / ln(L))`` on cos and sin (each of q and k);
    transformers' ``longrope`` default (1 for s <= 1)."""
    if factor <= 1:
        return 1.0
    return math.sqrt(1.0 + math.log(factor) / math.log(original_max_position))


def resolve_attention_factor(attention_factor, factor: float, original_max_position: int) -> float:
    """The attention factor a plan serves: a rule name (``"yarn"``: ``0.1 ln(s) + 1``; ``"entropy"``:
    ``sqrt(1 + ln(s) / ln(L))``; ``"none"``: 1), a number, or None for the default."""
    if attention_factor is None:
        attention_factor = DEFAULT_ATTENTION_FACTOR
    if isinstance(attention_factor, str):
        if attention_factor not in ATTENTION_RULES:
            raise InvalidValue(f"attention_factor must be a number or one of {ATTENTION_RULES}, "
                               f"got {attention_factor!r}")
        if attention_factor == "yarn":
            return yarn_attention_factor(factor)
        if attention_factor == "entropy":
            return entropy_attention_factor(factor, original_max_position)
        return 1.0
    return check_attention_factor("attention_factor", attention_factor)


def resolution_turns(original_max_position: int, bins: int) -> float:
    """Turns within ``L`` past which a pair's angle histogram cannot resolve its own disturbances.

    A pair making ``n`` turns within ``L`` has a continuous angle density that is uniform but for
    the last, partial turn: a relative difference of ``1/n``, and extrapolating or interpolating it
    changes only that (interpolation keeps it exactly: ``theta/s`` over ``sL`` is ``theta`` over
    ``L``). The histogram puts about ``L / (n * bins)`` positions in a bin per turn, and rounding
    can move one position per turn, so a bin's count can be off by a relative ``n * bins / L``
    (more where the period is near a ratio of the bin width: aliasing). The difference is
    resolvable only while ``1/n > n * bins / L``, i.e. ``n < sqrt(L / bins)``. Past that both
    candidates are uniform to the histogram's resolution and their KL difference is noise.
    """
    return math.sqrt(original_max_position / bins)


def soft_resolution_weights(turns: np.ndarray, cutoff: float, ramp: float) -> np.ndarray:
    """The robust rule's cutoff made soft: per pair, how far it may leave extrapolation. 1 at or below
    ``cutoff / sqrt(ramp)`` turns within L, 0 at or above ``cutoff * sqrt(ramp)``, linear in log(turns)
    between (the shape of YaRN's ramp, centred on the histogram's resolution instead of fixed turns)."""
    low, high = cutoff / math.sqrt(ramp), cutoff * math.sqrt(ramp)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(high / turns) / math.log(high / low), 0.0, 1.0)


_REFERENCE_CHUNK = 1 << 22  # fp32 angles per chunk in reference mode
# Real models rotate at most 512 dims per head (Gemma 3: 256); planning histograms every pair over
# every position, so cost grows with the pairs (and faster past ~1024: seconds there, minutes at 10**5).
MAX_HEAD_DIM = 1024


# ---------------------------------------------------------------------------------------------
# angle distributions
# ---------------------------------------------------------------------------------------------


def _reference_counts(table: torch.Tensor, length: int, bins: int) -> np.ndarray:
    """The public code's float32 histogram: ``floor(fp32(bins/2pi) * (fp32(f) * fp32(m) % 2pi))``."""
    table32 = table.float().reshape(-1, 1)
    n_freq = table32.shape[0]
    counts = torch.zeros(n_freq * bins, dtype=torch.int64)
    offsets = torch.arange(n_freq).reshape(-1, 1) * bins
    step = max(1, _REFERENCE_CHUNK // max(n_freq, 1))
    for start in range(0, length, step):
        positions = torch.arange(start, min(start + step, length)).reshape(1, -1)
        angles = (table32 * positions) % (torch.pi * 2)
        # fp32 rounding can carry an angle just below 2pi into bin `bins`; the public code would
        # index out of range there, we keep it in the last bin
        b = torch.floor((bins / (torch.pi * 2)) * angles).long().clamp_(max=bins - 1)
        counts += torch.bincount((b + offsets).reshape(-1), minlength=n_freq * bins)
    return counts.reshape(n_freq, bins).numpy()


class _ExactCounter:
    """Exact per-bin counts of ``[0, length)`` for many tables, each distinct phase counted once.

    Strategies share most frequencies (YaRN and llama3 reuse extrapolated and interpolated ones),
    so collecting the tables first and counting the distinct phases in one batch saves work.
    """

    def __init__(self, bins: int, device: torch.device | None = None):
        self.bins = bins
        self.device = device
        self._pending: dict[int, set[int]] = {}
        self._rows: dict[tuple[int, int], np.ndarray] = {}

    def request(self, table: torch.Tensor, length: int) -> list[int]:
        phases = phase.frequency_phases(table)
        self._pending.setdefault(length, set()).update(p for p in phases if (p, length) not in self._rows)
        return phases

    def counts(self, phases: Sequence[int], length: int) -> np.ndarray:
        todo = sorted(self._pending.pop(length, set()))
        if todo:
            rows = _count_phases(todo, length, self.bins, self.device)
            self._rows.update({(p, length): row for p, row in zip(todo, rows)})
        return np.stack([self._rows[(p, length)] for p in phases])


def _count_phases(phases: Sequence[int], length: int, bins: int, device) -> np.ndarray:
    if device is not None and torch.device(device).type == "cuda":
        from .ops.histogram import angle_histogram

        table = torch.tensor(phase.to_signed(phases), dtype=torch.int64, device=device)
        return angle_histogram(table, length=length, bins=bins, phases=True).cpu().numpy()
    return phase.count_range(phases, length, bins)


def angle_counts(
    inv_freq, length: int, *, bins: int = 360, precision: str = "exact", device=None
) -> np.ndarray:
    """Per-pair angle histogram of positions ``[0, length)``: ``[n_freq, bins]`` int64 counts."""
    table = _as_table(inv_freq, "inv_freq")
    length = _check_int("length", length, 0, MAX_POSITION)
    _check_precision(precision)
    phase.check_bins(bins)
    device = _check_device(device)
    if precision == "reference":
        return _reference_counts(table, length, bins)
    counter = _ExactCounter(bins, device)
    return counter.counts(counter.request(table, length), length)


def kl_per_pair(
    counts_original: np.ndarray,
    length_original: int,
    counts_target: np.ndarray,
    length_target: int,
    direction: str = "forward",
) -> np.ndarray:
    """``[n_freq]`` float64 ``KL(P_L || P_L')`` (``"forward"``) or ``KL(P_L' || P_L)`` (``"reverse"``).

    ``P[k] = (count[k] + 2**-14) / length``, the public code's smoothing.
    """
    p = (counts_original + SMOOTHING) / length_original
    q = (counts_target + SMOOTHING) / length_target
    if direction == "reverse":
        p, q = q, p
    return (p * np.log(p / q)).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidType(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidValue(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidValue(f"{name} must be <= {maximum} (2**62), got {value}")
    return int(value)


def _check_real(name: str, value) -> float:
    """A finite real number (Python or numpy, not bool) as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidType(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidValue(f"{name} must be finite, got {value}")
    return value


def _check_theta(rope_theta) -> float:
    rope_theta = _check_real("rope_theta", rope_theta)
    if rope_theta <= 1:
        raise InvalidValue(f"rope_theta must be a finite number > 1, got {rope_theta}")
    return rope_theta


def _check_device(device):
    """None, or a CPU / available CUDA device (the planner histograms on one of them)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidValue(f"device must be 'cpu' or 'cuda', got {device!r}") from err
    if device.type not in ("cpu", "cuda"):
        raise InvalidValue(f"the planner histograms on 'cpu' or 'cuda', not {device.type!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidValue("device 'cuda' was asked for, but this machine has no usable CUDA device")
    return device


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidValue(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _as_table(values, name: str, length: int | None = None) -> torch.Tensor:
    """A float64 CPU copy (never the caller's memory) of a real 1-D table."""
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise InvalidType(f"{name} must hold real numbers, got {values.dtype}")
        table = values.detach().to("cpu", torch.float64, copy=True)
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "fiu":
            raise InvalidType(f"{name} must hold real numbers, got dtype {array.dtype}")
        table = torch.tensor(array, dtype=torch.float64)
    if table.dim() != 1:
        raise InvalidValue(f"{name} must be 1-D [head_dim // 2], got shape {tuple(table.shape)}")
    if length is not None and table.numel() != length:
        raise InvalidValue(f"{name} has {table.numel()} frequencies, expected head_dim // 2 = {length}")
    if not torch.isfinite(table).all() or (table < 0).any():
        raise InvalidValue(f"{name} must hold finite, non-negative frequencies")
    return table


def check_table(inv_freq, attention_factor=1.0, *, n_pairs: int | None = None,
                where: str = "table") -> tuple[torch.Tensor, float]:
    """The one check of a table and the attention factor served with it, whatever made it (a plan, a
    ``dprope compare`` variant or table file, a table ``dprope export --from-compare`` reads):
    ``(inv_freq, attention_factor)``, the ``[n_pairs]`` frequencies finite and non-negative (a float64
    copy), the factor a finite positive number whose square fits float32
    (:func:`~dprope_kernels.ops.checks.check_attention_factor`). ``where`` names the table in errors."""
    return (_as_table(inv_freq, f"{where}: inv_freq", n_pairs),
            check_attention_factor(f"{where}: attention_factor", attention_factor))


def _resolve_lengths(original_max_position, target_max_position, factor) -> tuple[int, int, float]:
    original = _check_int("original_max_position", original_max_position, 1, MAX_POSITION)
    if target_max_position is None and factor is None:
        raise InvalidValue("give target_max_position or factor")
    if factor is not None:
        factor = _check_real("factor", factor)
        if factor <= 1:
            raise InvalidValue(f"factor must be > 1 (an extension), got {factor}")
        if original * factor > MAX_POSITION:
            raise InvalidValue(f"factor {factor} x original {original} is past the largest target, 2**62")
    if target_max_position is None:
        target = int(round(original * factor))
    else:
        target = _check_int("target_max_position", target_max_position, 1, MAX_POSITION)
        if factor is not None and target != int(round(original * factor)):
            raise InvalidValue(
                f"target_max_position {target} disagrees with factor {factor} x original {original}"
            )
    if target <= original:
        raise InvalidValue(
            f"target_max_position ({target}) must be above original_max_position ({original})"
        )
    return original, target, float(factor) if factor is not None else target / original


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopePlan:
    """A DPRoPE extension plan.

    Tensors are float64 on the CPU, ``[head_dim // 2]`` unless noted; disturbances are in nats.

    Attributes:
        inv_freq: the mixed table ``base_inv_freq / scaling``.
        scaling: per-pair scale ``s_i`` (1 = extrapolated, ``factor`` = interpolated).
        interpolated: bool per pair, True where the chosen strategy is not extrapolation.
        strategy: the chosen strategy's name per pair.
        disturbance: the plan's total, mean over pairs of the per-pair KL.
        baselines: strategy name -> total disturbance of applying it to every pair.
        pair_disturbance: strategy name (candidates, baselines and ``"dprope"``) -> per-pair KL.
        tables: strategy name -> its frequency table.
        attention_factor: the factor on cos and sin served with the table (YaRN's temperature:
            attention logits grow by its square); 1.0 is a pure rotation.
        ramp: the width (a ratio of turns) over which the robust rule's cutoff was made soft; 1.0 is
            the hard cutoff (and every rule but the robust threshold one).
        weight: per pair, how far it moved from extrapolation to its chosen candidate (0 or 1 but
            within a ramp).
    """

    head_dim: int
    rope_theta: float
    original_max_position: int
    target_max_position: int
    factor: float
    bins: int
    precision: str
    threshold: float | None
    num_interpolated_dims: int | None
    direction: str
    selection: str
    base_inv_freq: torch.Tensor
    inv_freq: torch.Tensor
    scaling: torch.Tensor
    interpolated: torch.Tensor
    strategy: tuple[str, ...]
    disturbance: float
    baselines: dict[str, float]
    pair_disturbance: dict[str, torch.Tensor] = field(repr=False)
    tables: dict[str, torch.Tensor] = field(repr=False)
    # per pair: turns of the original table within L (L * theta_i / 2pi)
    turns: torch.Tensor = field(repr=False)
    resolved: torch.Tensor = field(repr=False)  # per pair: bool, the histogram can resolve its disturbances
    attention_factor: float = 1.0
    ramp: float = 1.0
    weight: torch.Tensor | None = field(default=None, repr=False)

    @property
    def resolution_turns(self) -> float:
        """``sqrt(L / bins)``: pairs with more turns than this within L are uniform at the histogram's
        resolution."""
        return resolution_turns(self.original_max_position, self.bins)

    @property
    def interpolated_pairs(self) -> list[int]:
        """The pairs that leave extrapolation, wholly (``I`` in :meth:`format_table`'s map) or partly
        (``R``, :attr:`ramped_pairs`): the pairs the table divides."""
        return torch.nonzero(self.interpolated).flatten().tolist()

    def divisors(self) -> list[float]:
        """``s_i`` with ``inv_freq[i] = base_inv_freq[i] / s_i``, as JSON floats (what an export writes as
        longrope factors): exactly 1.0 for an extrapolated pair and exactly ``factor`` for an interpolated
        one (not the float64 quotient, which can be off by an ulp); the quotient for other candidates and
        ramped pairs."""
        exact = {"extrapolation": 1.0, "interpolation": float(self.factor)}
        return [exact.get(strategy, float(self.scaling[i])) for i, strategy in enumerate(self.strategy)]

    @property
    def ramped_pairs(self) -> list[int]:
        """The interpolated pairs that leave extrapolation only partly (weight strictly between 0 and 1:
        strategy ``"ramp"``, ``R`` in the map), within the soft cutoff's ramp."""
        return [i for i, strategy in enumerate(self.strategy) if strategy == "ramp"]

    def rope_config(self) -> dict:
        """Rope settings for a Hugging Face config (``rope_type: "dprope"``), enough to rebuild the plan."""
        config = {
            "rope_type": "dprope",
            "rope_theta": self.rope_theta,
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position,
            "max_position_embeddings": self.target_max_position,
            "dprope_bins": self.bins,
            "dprope_precision": self.precision,
            "dprope_interpolated_pairs": self.interpolated_pairs,
            "dprope_attention_factor": self.attention_factor,
        }
        config["dprope_ramp"] = self.ramp
        config["dprope_selection"] = self.selection
        if self.num_interpolated_dims is not None:
            config["dprope_num_interpolated_dims"] = self.num_interpolated_dims
        else:
            config["dprope_threshold"] = json_number(self.threshold)
        return config

    def to_dict(self) -> dict:
        """Everything in the plan as strict-JSON-ready Python values (an infinite threshold as a string,
        :func:`json_number`)."""
        return {
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "original_max_position": self.original_max_position,
            "target_max_position": self.target_max_position,
            "factor": self.factor,
            "bins": self.bins,
            "precision": self.precision,
            "threshold": json_number(self.threshold),
            "num_interpolated_dims": self.num_interpolated_dims,
            "direction": self.direction,
            "selection": self.selection,
            "attention_factor": self.attention_factor,
            "ramp": self.ramp,
            "weight": None if self.weight is None else self.weight.tolist(),
            "resolution_turns": self.resolution_turns,
            "turns": self.turns.tolist(),
            "resolved": self.resolved.tolist(),
            "disturbance": self.disturbance,
            "baselines": dict(self.baselines),
            "inv_freq": self.inv_freq.tolist(),
            "scaling": self.scaling.tolist(),
            "interpolated_pairs": self.interpolated_pairs,
            "ramped_pairs": self.ramped_pairs,
            "strategy": list(self.strategy),
            "pair_disturbance": {k: v.tolist() for k, v in self.pair_disturbance.items()},
            "rope_config": self.rope_config(),
        }

    def format_table(self, per_pair: bool = False) -> str:
        """A text report: totals per strategy (x1e-3) and the per-pair choices."""
        rule = (
            f"n_hat {self.num_interpolated_dims} dims"
            if self.num_interpolated_dims is not None
            else f"threshold {self.threshold:g}"
        )
        if self.selection == "robust" and self.ramp == 1:
            rule += (f", robust: pairs with > {self.resolution_turns:.2f} turns in L stay extrapolated "
                     f"({int((~self.resolved).sum())} pairs)")
        elif self.selection == "robust":
            rule += (f", robust, soft: pairs ramp from their choice to extrapolation between "
                     f"{self.resolution_turns / math.sqrt(self.ramp):.2f} and "
                     f"{self.resolution_turns * math.sqrt(self.ramp):.2f} turns in L")
        lines = [
            f"DPRoPE plan: head_dim {self.head_dim}, rope_theta {self.rope_theta:g}, "
            f"{self.original_max_position} -> {self.target_max_position} (x{self.factor:g}), "
            f"{self.bins} bins, {self.precision} angles, {rule}, "
            f"attention factor {self.attention_factor:.4g}",
            "",
            "total disturbance, mean over pairs of KL(P_L || P_L'), x1e-3:"
            if self.direction == "forward"
            else "total disturbance, mean over pairs of KL(P_L' || P_L), x1e-3:",
        ]
        for name, value in self.baselines.items():
            lines.append(f"  {name:<14}{value * 1e3:10.3f}")
        ramped = self.ramped_pairs
        lines.append(
            f"  {'dprope':<14}{self.disturbance * 1e3:10.3f}   (the table served: "
            f"{len(self.interpolated_pairs)} of {self.head_dim // 2} pairs interpolated"
            + (f", {len(ramped)} of them ramped)" if ramped else ")")
        )
        lines += ["", "per-pair choice (E = extrapolate, I = interpolate, R = ramped: partly interpolated, "
                      "other = first letter):"]
        marks = "".join(
            "E" if s == "extrapolation" else "I" if s == "interpolation" else "R" if s == "ramp"
            else s[0].upper()
            for s in self.strategy
        )
        for start in range(0, len(marks), 32):
            end = min(start + 32, len(marks)) - 1
            lines.append(f"  pairs {start:>3}-{end:<3} {marks[start:end + 1]}")
        lines.append(f"  interpolated pairs (I and R): {self.interpolated_pairs}")
        if ramped:
            lines.append(f"  ramped pairs (R): {ramped}")
        if per_pair:
            names = [n for n in self.pair_disturbance if n != "dprope"]
            lines += ["", "  pair   inv_freq      wavelen  " + "".join(f"{n[:12]:>13}" for n in names)
                      + "  choice"]
            for i in range(self.head_dim // 2):
                base = float(self.base_inv_freq[i])
                wavelen = 2 * math.pi / base if base > 0 else math.inf
                values = "".join(f"{float(self.pair_disturbance[n][i]) * 1e3:13.4f}" for n in names)
                lines.append(f"  {i:>4} {base:10.4e} {wavelen:12.1f}  {values}  {self.strategy[i]}")
            lines.append("  (per-pair disturbances x1e-3)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def plan_dprope(
    head_dim: int = 128,
    rope_theta: float = 10000.0,
    original_max_position: int = 4096,
    target_max_position: int | None = None,
    *,
    factor: float | None = None,
    bins: int = 360,
    threshold: float | None = None,
    num_interpolated_dims: int | None = None,
    precision: str = "exact",
    inv_freq=None,
    extra_candidates: Sequence[str] | Mapping[str, object] = (),
    direction: str = "forward",
    selection: str | None = None,
    attention_factor: float | str | None = None,
    ramp: float | None = None,
    device=None,
) -> RopePlan:
    """Plan a DPRoPE context extension.

    Args:
        head_dim: rotary dims per head (even); the table has ``head_dim // 2`` pairs.
        rope_theta: RoPE base.
        original_max_position: pre-training length ``L``.
        target_max_position: target length ``L'`` (> L); or give ``factor`` (``L' = round(factor L)``).
        bins: histogram bins per turn (the paper uses 360).
        threshold: eq. 9's ``t``: pair ``i`` leaves extrapolation iff its disturbance drops by
            more than ``t``. Default 0 (the public code's choice; ties stay extrapolated).
        num_interpolated_dims: the paper's ``n_hat`` instead of a threshold: the
            ``n_hat / 2`` pairs with the largest drop leave extrapolation. Even, in [0, head_dim].
        precision: ``"exact"`` (fixed-point angles) or ``"reference"`` (the public code's float32).
        inv_freq: optional pre-trained ``[head_dim // 2]`` table; default HF's ``inv_freq``.
        extra_candidates: more per-pair candidates beside extrapolation and interpolation:
            strategy names (``"ntk"``, ``"yarn"``, ``"llama3"``) or a mapping name -> table.
        direction: ``"forward"`` = KL(P_L || P_L') (reproduces the paper's Table 3) or
            ``"reverse"`` (the direction the paper's eq. 8 prints).
        selection: ``"robust"``: a pair whose angles make more than ``sqrt(L / bins)`` turns
            within ``L`` stays extrapolated whatever its measured disturbances, which are
            histogram noise there (see :func:`resolution_turns`); the rest are decided by the
            rule. ``"paper"``: every pair by its disturbances (the paper's and the public code's
            selections, bit for bit). Default: ``"paper"`` with ``num_interpolated_dims`` or
            ``precision="reference"`` (the paper's procedures), else ``"robust"`` (it serves a real
            model better: see the README's real-model comparison).
        attention_factor: the factor on cos and sin served with the table: a number, ``"yarn"``
            (``0.1 ln(factor) + 1``, YaRN's temperature), ``"entropy"`` (``sqrt(1 + ln(factor) / ln(L))``,
            attention's entropy scale kept) or ``"none"`` (1.0). Default
            :data:`DEFAULT_ATTENTION_FACTOR`, chosen by measurement on a real model (README, "Real
            model"). It does not change the choice of pairs.
        ramp: make the robust rule's cutoff soft (``selection="robust"`` with a threshold): pairs
            within a factor ``sqrt(ramp)`` of ``sqrt(L / bins)`` turns blend their chosen candidate's
            frequency with extrapolation, linearly in log(turns) (:func:`soft_resolution_weights`).
            1.0: the hard cutoff. Default :data:`DEFAULT_RAMP` for the robust threshold rule (chosen by
            measurement, like the attention factor), 1.0 for the others.
        device: where to histogram; a CUDA device uses the GPU histogram kernel.

    Returns:
        A :class:`RopePlan`.
    """
    s = _settings(head_dim, rope_theta, original_max_position, target_max_position, factor, bins, threshold,
                  num_interpolated_dims, precision, direction, selection, attention_factor, ramp, device)
    base = default_inv_freq(s.head_dim, s.rope_theta) if inv_freq is None else _as_table(inv_freq, "inv_freq",
                                                                                          s.n_pairs)
    tables, candidates = _candidate_tables(s, base, extra_candidates)
    scored = list(dict.fromkeys(candidates + list(BASELINES) + ["llama3"]))
    histograms = _Histograms(s, base)
    pair_kl = dict(zip(scored, histograms.disturbances([tables[name] for name in scored])))
    turns = base.numpy() * s.original / (2 * math.pi)
    chosen, picked, resolved = _select(s, pair_kl, candidates, turns)
    weight = _ramp(s, chosen, turns)
    strategy, inv_freq_plan = _mix(tables, picked, weight)
    pair_kl["dprope"] = _served_disturbance(pair_kl, strategy, inv_freq_plan, histograms)
    check_table(inv_freq_plan, s.attention_factor, n_pairs=s.n_pairs, where="the plan")  # as every table is
    return RopePlan(
        head_dim=s.head_dim, rope_theta=s.rope_theta, original_max_position=s.original,
        target_max_position=s.target, factor=s.factor, bins=s.bins, precision=s.precision,
        threshold=s.threshold, num_interpolated_dims=s.n_hat, direction=s.direction, selection=s.selection,
        base_inv_freq=base, inv_freq=inv_freq_plan,
        scaling=torch.where(inv_freq_plan > 0, base / inv_freq_plan, torch.ones_like(base)),
        interpolated=torch.tensor(weight > 0), strategy=strategy, disturbance=float(pair_kl["dprope"].mean()),
        baselines={name: float(pair_kl[name].mean()) for name in scored
                   if name in BASELINES or name == "llama3"},
        pair_disturbance={name: torch.from_numpy(v) for name, v in pair_kl.items()},
        tables={name: tables[name] for name in scored}, turns=torch.from_numpy(turns),
        resolved=torch.from_numpy(resolved), attention_factor=s.attention_factor, ramp=s.ramp,
        weight=torch.from_numpy(weight),
    )


# ---------------------------------------------------------------------------------------------
# the planning steps: the inputs resolved, the candidates' tables, their histograms and disturbances,
# the selection, the ramp, the mixed table and its own disturbance
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """:func:`plan_dprope`'s arguments, checked, with the defaults they leave resolved."""

    head_dim: int
    rope_theta: float
    original: int  # L
    target: int  # L'
    factor: float
    bins: int
    precision: str
    direction: str
    selection: str
    threshold: float | None  # None with n_hat
    n_hat: int | None
    ramp: float
    attention_factor: float
    device: torch.device | None

    @property
    def n_pairs(self) -> int:
        return self.head_dim // 2


def _settings(head_dim, rope_theta, original_max_position, target_max_position, factor, bins, threshold,
              num_interpolated_dims, precision, direction, selection, attention_factor, ramp,
              device) -> _Settings:
    """Resolve the inputs: each checked (in this order, which fixes the error a call with several bad ones
    gets), the defaults filled in."""
    head_dim = _check_head_dim(head_dim)
    rope_theta = _check_theta(rope_theta)
    device = _check_device(device)
    original, target, factor = _resolve_lengths(original_max_position, target_max_position, factor)
    attention_factor = resolve_attention_factor(attention_factor, factor, original)
    phase.check_bins(bins)
    _check_precision(precision)
    if direction not in DIRECTIONS:
        raise InvalidValue(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if selection is None:
        selection = "paper" if num_interpolated_dims is not None or precision == "reference" else "robust"
    if selection not in SELECTIONS:
        raise InvalidValue(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if threshold is not None and num_interpolated_dims is not None:
        raise InvalidValue("give threshold or num_interpolated_dims, not both")
    ramp = _check_ramp(ramp, selection == "robust" and num_interpolated_dims is None, selection)
    if num_interpolated_dims is not None:
        num_interpolated_dims = _check_n_hat(num_interpolated_dims, head_dim)
    else:
        threshold = _check_threshold(threshold)
    return _Settings(head_dim, float(rope_theta), original, target, factor, int(bins), precision, direction,
                     selection, threshold, num_interpolated_dims, ramp, attention_factor, device)


def _check_head_dim(head_dim) -> int:
    head_dim = _check_int("head_dim", head_dim, 4)  # NTK-aware scaling divides by head_dim - 2
    if head_dim % 2:
        raise InvalidValue(f"head_dim must be even, got {head_dim}")
    if head_dim > MAX_HEAD_DIM:
        raise InvalidValue(
            f"head_dim must be <= {MAX_HEAD_DIM}, got {head_dim}: the planner histograms every frequency "
            f"pair over every position (real models rotate at most 512 dims per head), so {head_dim} would "
            "run for minutes; give the rotary dims per head, not the model's hidden size"
        )
    return head_dim


def _check_ramp(ramp, robust_threshold: bool, selection: str) -> float:
    """The ramp: :data:`DEFAULT_RAMP` for the robust threshold rule unless given, else 1 (no ramp)."""
    ramp = _check_real("ramp", (DEFAULT_RAMP if robust_threshold else 1.0) if ramp is None else ramp)
    if ramp < 1 or (ramp > 1 and not robust_threshold):
        raise InvalidValue(f"ramp must be >= 1, and above 1 it softens the robust selection's cutoff "
                           f"(selection='robust', no num_interpolated_dims); got ramp={ramp}, "
                           f"selection={selection!r}")
    return ramp


def _check_n_hat(n_hat, head_dim: int) -> int:
    n_hat = _check_int("num_interpolated_dims", n_hat, 0)
    if n_hat % 2 or n_hat > head_dim:
        raise InvalidValue(f"num_interpolated_dims must be even and in [0, head_dim={head_dim}], got {n_hat}")
    return n_hat


def _check_threshold(threshold) -> float:
    if threshold is None:
        return 0.0
    if (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
            or math.isnan(threshold)):
        raise InvalidType(f"threshold must be a number (inf interpolates nothing), got {threshold!r}")
    return float(threshold)


def _candidate_tables(s: _Settings, base: torch.Tensor, extra_candidates) -> tuple[dict, list[str]]:
    """``(tables, candidates)``: every strategy's table (and the extra candidates'), and the candidates a pair
    chooses among, extrapolation first."""
    context = dict(head_dim=s.head_dim, rope_theta=s.rope_theta, factor=s.factor,
                   original_max_position=s.original)
    tables = {name: strategy_table(name, base, **context) for name in STRATEGIES}
    if s.precision == "reference":
        # the public code divides the float32 table by the factor in float32
        tables["interpolation"] = (base.float() / s.factor).double()
    candidates = ["extrapolation", "interpolation"]
    if isinstance(extra_candidates, Mapping):
        for name, values in extra_candidates.items():
            tables[name] = _as_table(values, f"extra_candidates[{name!r}]", s.n_pairs)
            candidates.append(name)
    else:
        for name in [extra_candidates] if isinstance(extra_candidates, str) else extra_candidates:
            if name not in STRATEGIES:
                raise InvalidValue(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
            candidates.append(name)
    return tables, list(dict.fromkeys(candidates))


class _Histograms:
    """The angle histograms a plan compares: the pre-trained table's over ``[0, L)``, and any table's over
    ``[0, L')`` (the public code's float32 counts in reference precision, else exact counts, each
    distinct phase counted once)."""

    def __init__(self, s: _Settings, base: torch.Tensor):
        self.s = s
        self.counter = None if s.precision == "reference" else _ExactCounter(s.bins, s.device)
        self.original = self._counts([base], s.original)[0]

    def _counts(self, tables: list[torch.Tensor], length: int) -> list[np.ndarray]:
        if self.counter is None:
            return [_reference_counts(table, length, self.s.bins) for table in tables]
        phases = [self.counter.request(table, length) for table in tables]  # requested together: one batch
        return [self.counter.counts(p, length) for p in phases]

    def disturbances(self, tables: list[torch.Tensor]) -> list[np.ndarray]:
        """``[n_pairs]`` per-pair KL of each table over ``[0, L')`` against the pre-trained ``[0, L)``."""
        s = self.s
        return [kl_per_pair(self.original, s.original, counts, s.target, s.direction)
                for counts in self._counts(tables, s.target)]


def _select(s: _Settings, pair_kl: dict, candidates: list[str],
            turns: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(chosen, picked, resolved)``: which pairs leave extrapolation (eq. 9's threshold, or the
    ``n_hat / 2`` largest gains), each pair's best other candidate, and (robust selection) which pairs the
    histogram resolves; the others stay extrapolated, except within the ramp (:func:`_ramp`)."""
    others = np.stack([pair_kl[name] for name in candidates[1:]])
    best_other = np.argmin(others, axis=0)  # first on ties
    gain = pair_kl["extrapolation"] - others[best_other, np.arange(s.n_pairs)]
    cutoff = resolution_turns(s.original, s.bins)
    resolved = turns <= cutoff if s.selection == "robust" else np.ones(s.n_pairs, dtype=bool)
    if s.n_hat is not None:
        if s.n_hat // 2 > int(resolved.sum()):
            raise InvalidValue(
                f"num_interpolated_dims={s.n_hat} asks for {s.n_hat // 2} pairs, but selection='robust' "
                f"leaves {int(resolved.sum())} pairs that the histogram resolves "
                f"(<= {cutoff:.2f} turns in L)")
        chosen = np.zeros(s.n_pairs, dtype=bool)
        chosen[np.argsort(-np.where(resolved, gain, -np.inf), kind="stable")[: s.n_hat // 2]] = True
    elif s.ramp > 1:
        chosen = gain > s.threshold  # the ramp, not a hard cutoff, keeps unresolved pairs extrapolated
    else:
        chosen = (gain > s.threshold) & resolved
    return chosen, [candidates[1 + best_other[i]] for i in range(s.n_pairs)], resolved


def _ramp(s: _Settings, chosen: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """``[n_pairs]`` weight: how far each pair moves from extrapolation to its pick (1 or 0, but within the
    soft cutoff's ramp)."""
    weight = chosen.astype(np.float64)
    if s.ramp > 1:
        weight *= soft_resolution_weights(turns, resolution_turns(s.original, s.bins), s.ramp)
    return weight


def _mix(tables: dict, picked: list[str], weight: np.ndarray) -> tuple[tuple[str, ...], torch.Tensor]:
    """``(strategy, inv_freq)``: each pair's strategy (``"ramp"`` where its weight is strictly between 0
    and 1) and the plan's table, each pair's pick where the weight is 1, extrapolation where it is 0,
    blended linearly between."""
    strategy = tuple("extrapolation" if w == 0 else p if w == 1 else "ramp" for w, p in zip(weight, picked))
    blended = torch.stack([tables["extrapolation"][i] * (1 - w) + tables[p][i] * w
                           for i, (w, p) in enumerate(zip(weight.tolist(), picked))])
    inv_freq = torch.where(torch.from_numpy(weight == 1),
                           torch.stack([tables[p][i] for i, p in enumerate(picked)]),
                           torch.where(torch.from_numpy(weight == 0), tables["extrapolation"], blended))
    return strategy, inv_freq


def _served_disturbance(pair_kl: dict, strategy: tuple[str, ...], inv_freq: torch.Tensor,
                        histograms: _Histograms) -> np.ndarray:
    """``[n_pairs]`` the disturbance of the table served: each pair's pick's, the blended pairs' their own."""
    plan_kl = np.array([pair_kl[name][i] if name != "ramp" else np.nan for i, name in enumerate(strategy)])
    if "ramp" in strategy:
        (ramped,) = histograms.disturbances([inv_freq])
        plan_kl = np.where(np.isnan(plan_kl), ramped, plan_kl)
    return plan_kl


def table_disturbance(
    inv_freq,
    *,
    original_max_position: int,
    target_max_position: int | None = None,
    factor: float | None = None,
    head_dim: int | None = None,
    rope_theta: float = 10000.0,
    base_inv_freq=None,
    bins: int = 360,
    precision: str = "exact",
    direction: str = "forward",
    device=None,
) -> torch.Tensor:
    """Per-pair disturbance of any frequency table against the pre-training distribution.

    Args:
        inv_freq: ``[n_pairs]`` the table to score (e.g. a user's own scaling).
        original_max_position, target_max_position | factor: ``L`` and ``L'``.
        base_inv_freq: ``[n_pairs]`` pre-trained table; default HF's for ``head_dim``
            (default ``2 * n_pairs``) and ``rope_theta``.

    Returns:
        ``[n_pairs]`` float64 KL per pair (nats); ``.mean()`` is the total as plans report it.
    """
    table = _as_table(inv_freq, "inv_freq")
    n_pairs = table.numel()
    if head_dim is None:
        head_dim = 2 * n_pairs
    elif _check_int("head_dim", head_dim, 2) != 2 * n_pairs:
        raise InvalidValue(f"inv_freq has {n_pairs} frequencies, expected head_dim // 2 = {head_dim // 2}")
    rope_theta = _check_theta(rope_theta)
    device = _check_device(device)
    original, target, _ = _resolve_lengths(original_max_position, target_max_position, factor)
    if direction not in DIRECTIONS:
        raise InvalidValue(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    base = default_inv_freq(head_dim, rope_theta) if base_inv_freq is None else _as_table(
        base_inv_freq, "base_inv_freq", n_pairs
    )
    original_counts = angle_counts(base, original, bins=bins, precision=precision, device=device)
    target_counts = angle_counts(table, target, bins=bins, precision=precision, device=device)
    return torch.from_numpy(kl_per_pair(original_counts, original, target_counts, target, direction))
