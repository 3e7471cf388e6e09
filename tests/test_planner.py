"""The planner vs the public code's selections, the paper's figures and a slow independent reference."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import dprope_kernels as dk
from dprope_kernels.planner import SMOOTHING

PI = Fraction("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863")


# --------------------------------------------------------------------------- slow reference


def slow_inv_freq(head_dim, base):
    return [float(np.float32(1.0) / np.power(np.float32(base), np.float32(2 * i) / np.float32(head_dim)))
            for i in range(head_dim // 2)]


def slow_counts(theta, length, bins, precision):
    """One pair's histogram, position by position, the public code's loop."""
    counts = [0] * bins
    if precision == "exact":
        turn = Fraction(theta) / (2 * PI)
        for m in range(length):
            t = turn * m
            counts[math.floor(bins * (t - math.floor(t)))] += 1
    else:
        two_pi = np.float32(np.pi * 2)
        scale = np.float32(bins / (np.pi * 2))
        theta32 = np.float32(theta)
        for m in range(length):
            angle = np.fmod(theta32 * np.float32(m), two_pi)
            counts[min(int(np.floor(scale * angle)), bins - 1)] += 1
    return counts


def slow_kl(c_ref, n_ref, c_new, n_new):
    total = 0.0
    for a, b in zip(c_ref, c_new):
        p, q = (a + SMOOTHING) / n_ref, (b + SMOOTHING) / n_new
        total += p * math.log(p / q)
    return total


def slow_plan(head_dim, base, original, factor, bins, precision):
    target = round(original * factor)
    d_interp, d_extrap = [], []
    for theta in slow_inv_freq(head_dim, base):
        interp = float(np.float32(theta) / np.float32(factor)) if precision == "reference" else theta / factor
        ref = slow_counts(theta, original, bins, precision)
        de = slow_kl(ref, original, slow_counts(theta, target, bins, precision), target)
        di = slow_kl(ref, original, slow_counts(interp, target, bins, precision), target)
        d_extrap.append(de)
        d_interp.append(di)
    selected = [i for i, (e, p) in enumerate(zip(d_extrap, d_interp)) if e - p > 0]
    return selected, d_extrap, d_interp


# --------------------------------------------------------------------------- the paper and the public code


@pytest.mark.parametrize("index", [0, 1], ids=["4k-8k", "4k-16k"])
def test_reference_precision_reproduces_public_selections(reference_data, index):
    case = reference_data["selections_from_public_code"][index]
    plan = dk.plan_dprope(
        head_dim=case["head_dim"],
        rope_theta=case["rope_theta"],
        original_max_position=case["original_max_position"],
        target_max_position=case["target_max_position"],
        bins=case["bins"],
        precision="reference",
    )
    assert plan.interpolated_pairs == case["interpolated_pairs"]
    assert plan.factor == case["scaling_factor"]


@pytest.mark.parametrize("precision", ["reference", "exact"])
@pytest.mark.parametrize("length", ["8k", "16k"])
def test_totals_match_table3(reference_data, precision, length):
    figures = reference_data["recomputed"][precision][length]
    factor = {"8k": 2, "16k": 4}[length]
    n_hat = reference_data["paper_defaults"]["num_interpolated_dims"][length]
    plan = dk.plan_dprope(factor=factor, precision=precision, selection="paper")
    plan_nhat = dk.plan_dprope(factor=factor, precision=precision, num_interpolated_dims=n_hat)
    assert plan.baselines["interpolation"] * 1e3 == pytest.approx(figures["PI"], abs=0.01)
    assert plan.baselines["extrapolation"] * 1e3 == pytest.approx(figures["extrapolation"], abs=0.01)
    assert plan.disturbance * 1e3 == pytest.approx(figures["DPRoPE_t0"], abs=0.01)
    assert plan_nhat.disturbance * 1e3 == pytest.approx(figures[f"DPRoPE_{n_hat}_dims"], abs=0.01)
    assert int(plan_nhat.interpolated.sum()) == n_hat // 2
    if precision == "reference":
        paper = reference_data["table3_paper"][length]
        assert plan.baselines["interpolation"] * 1e3 == pytest.approx(paper["PI"], abs=0.011)
        assert plan.disturbance * 1e3 == pytest.approx(paper["DPRoPE"], abs=0.011)
        # the paper's YaRN settings are not published; HF's defaults land within 0.1
        assert plan.baselines["yarn"] * 1e3 == pytest.approx(paper["YaRN"], abs=0.1)


# --------------------------------------------------------------------------- other configurations


@pytest.mark.parametrize(
    "head_dim, base, original, factor, bins",
    [
        (16, 10000.0, 512, 2, 360),
        (16, 500000.0, 256, 8, 90),
        (24, 1e6, 300, 2.5, 36),
        (8, 10.0, 1000, 3, 1000),
    ],
)
@pytest.mark.parametrize("precision", ["exact", "reference"])
def test_plan_matches_slow_reference(head_dim, base, original, factor, bins, precision):
    selected, d_extrap, d_interp = slow_plan(head_dim, base, original, factor, bins, precision)
    plan = dk.plan_dprope(head_dim=head_dim, rope_theta=base, original_max_position=original,
                          factor=factor, bins=bins, precision=precision, selection="paper")
    assert plan.interpolated_pairs == selected
    np.testing.assert_allclose(plan.pair_disturbance["extrapolation"].numpy(), d_extrap, rtol=1e-9,
                               atol=1e-15)
    np.testing.assert_allclose(plan.pair_disturbance["interpolation"].numpy(), d_interp, rtol=1e-9,
                               atol=1e-15)
    expected = np.where(np.isin(np.arange(head_dim // 2), selected), d_interp, d_extrap)
    assert plan.disturbance == pytest.approx(expected.mean(), rel=1e-9)


def test_plan_fields_are_consistent():
    plan = dk.plan_dprope(head_dim=64, rope_theta=10000.0, original_max_position=2048, factor=4,
                          selection="paper")
    base = dk.default_inv_freq(64, 10000.0)
    assert plan.inv_freq.dtype == torch.float64 and plan.inv_freq.shape == (32,)
    expected_scaling = torch.where(plan.interpolated, torch.tensor(4.0, dtype=torch.float64),
                                   torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(plan.scaling, expected_scaling)
    torch.testing.assert_close(plan.inv_freq, base / expected_scaling)
    assert set(plan.baselines) >= {"extrapolation", "interpolation", "ntk", "yarn"}
    per_pair = torch.minimum(plan.pair_disturbance["extrapolation"], plan.pair_disturbance["interpolation"])
    assert plan.disturbance == pytest.approx(float(per_pair.mean()))
    assert plan.disturbance <= min(plan.baselines["extrapolation"], plan.baselines["interpolation"])
    json.dumps(plan.to_dict())
    config = plan.rope_config()
    assert config["rope_type"] == "dprope" and config["factor"] == 4.0
    assert config["original_max_position_embeddings"] == 2048
    assert config["dprope_interpolated_pairs"] == plan.interpolated_pairs


def test_threshold_and_n_hat_rules():
    loose = dk.plan_dprope(factor=4, selection="paper")
    strict = dk.plan_dprope(factor=4, threshold=1e-2, selection="paper")
    gain = loose.pair_disturbance["extrapolation"] - loose.pair_disturbance["interpolation"]
    assert strict.interpolated_pairs == torch.nonzero(gain > 1e-2).flatten().tolist()
    assert dk.plan_dprope(factor=4, threshold=math.inf).interpolated_pairs == []
    assert dk.plan_dprope(factor=4, num_interpolated_dims=0).interpolated_pairs == []
    assert len(dk.plan_dprope(factor=4, num_interpolated_dims=128).interpolated_pairs) == 64
    n20 = dk.plan_dprope(factor=4, num_interpolated_dims=20)
    top = torch.argsort(gain, descending=True, stable=True)[:10].sort().values.tolist()
    assert n20.interpolated_pairs == top


def test_extra_candidates_can_only_lower_the_disturbance():
    plain = dk.plan_dprope(factor=4, ramp=1)  # hard cutoff: each pair takes one candidate's frequency
    richer = dk.plan_dprope(factor=4, ramp=1, extra_candidates=["yarn", "ntk"])
    assert richer.disturbance <= plain.disturbance + 1e-15
    assert set(richer.strategy) <= {"extrapolation", "interpolation", "yarn", "ntk"}
    custom = dk.plan_dprope(factor=4, ramp=1,
                            extra_candidates={"half": dk.default_inv_freq(128, 10000.0) / 2})
    assert set(custom.strategy) <= {"extrapolation", "interpolation", "half"}
    assert custom.disturbance <= plain.disturbance + 1e-15


def test_table_disturbance_scores_any_table():
    plan = dk.plan_dprope(factor=4)
    score = dk.table_disturbance(plan.inv_freq, original_max_position=4096, factor=4)
    torch.testing.assert_close(score, plan.pair_disturbance["dprope"])
    yarn = dk.table_disturbance(plan.tables["yarn"], original_max_position=4096, target_max_position=16384)
    assert float(yarn.mean()) == pytest.approx(plan.baselines["yarn"])
    with pytest.raises(ValueError, match="head_dim"):
        dk.table_disturbance(plan.inv_freq, original_max_position=4096, factor=4, head_dim=64)


def test_reverse_direction_is_the_other_kl():
    fwd = dk.plan_dprope(head_dim=32, original_max_position=512, factor=2)
    rev = dk.plan_dprope(head_dim=32, original_max_position=512, factor=2, direction="reverse")
    base = dk.default_inv_freq(32, 10000.0)
    c_orig = dk.angle_counts(base, 512)
    c_new = dk.angle_counts(base, 1024)
    expected = dk.kl_per_pair(c_new, 1024, c_orig, 512)
    np.testing.assert_allclose(rev.pair_disturbance["extrapolation"].numpy(), expected, rtol=1e-12)
    assert not torch.allclose(fwd.pair_disturbance["extrapolation"], rev.pair_disturbance["extrapolation"])


def test_user_base_table():
    base = dk.default_inv_freq(64, 50000.0)
    a = dk.plan_dprope(head_dim=64, rope_theta=50000.0, original_max_position=1024, factor=4)
    b = dk.plan_dprope(head_dim=64, rope_theta=50000.0, original_max_position=1024, factor=4, inv_freq=base)
    assert a.interpolated_pairs == b.interpolated_pairs and a.disturbance == b.disturbance


def test_long_extension_plans_with_lattice_counts():
    plan = dk.plan_dprope(factor=256, selection="paper")  # 4k -> 1M
    assert plan.target_max_position == 4096 * 256
    assert 0 < plan.disturbance < plan.baselines["interpolation"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(head_dim=127, factor=2), ValueError, "head_dim"),
        (dict(head_dim=0, factor=2), ValueError, "head_dim"),
        (dict(head_dim=-4, factor=2), ValueError, "head_dim"),
        (dict(head_dim=64.0, factor=2), TypeError, "head_dim"),
        # past any model's rotary dims
        (dict(head_dim=1026, factor=2), ValueError, "head_dim must be <= 1024"),
        (dict(target_max_position=4096), ValueError, "target_max_position"),
        (dict(target_max_position=2048), ValueError, "target_max_position"),
        (dict(factor=1.0), ValueError, "factor"),
        (dict(factor=0.5), ValueError, "factor"),
        (dict(factor=2, target_max_position=10000), ValueError, "disagrees"),
        (dict(), ValueError, "target_max_position or factor"),
        (dict(factor=2, bins=1), ValueError, "bins"),
        (dict(factor=2, bins=2.5), TypeError, "bins"),
        (dict(factor=2, num_interpolated_dims=63), ValueError, "num_interpolated_dims"),
        (dict(factor=2, num_interpolated_dims=130), ValueError, "num_interpolated_dims"),
        (dict(factor=2, num_interpolated_dims=-2), ValueError, "num_interpolated_dims"),
        (dict(factor=2, threshold=0.0, num_interpolated_dims=64), ValueError, "not both"),
        (dict(factor=2, precision="fp16"), ValueError, "precision"),
        (dict(factor=2, direction="sideways"), ValueError, "direction"),
        (dict(factor=2, extra_candidates=["rope2"]), ValueError, "unknown strategy"),
        (dict(factor=2, inv_freq=[1.0] * 10), ValueError, "inv_freq"),
        (dict(factor=2, inv_freq=[[1.0] * 64]), ValueError, "inv_freq"),
        (dict(factor=2, inv_freq=[float("nan")] * 64), ValueError, "inv_freq"),
        (dict(factor=2, rope_theta=1.0), ValueError, "rope_theta"),
        (dict(factor=2, original_max_position=0), ValueError, "original_max_position"),
        (dict(factor=2, extra_candidates={"mine": [1.0] * 3}), ValueError, "extra_candidates"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        dk.plan_dprope(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(head_dim=2, factor=2), ValueError, "head_dim must be >= 4"),
        (dict(factor=2, target_max_position=2**63), ValueError, r"2\*\*62"),
        (dict(original_max_position=2**63, factor=2), ValueError, r"2\*\*62"),
        (dict(original_max_position=2**61, factor=4.0), ValueError, r"2\*\*62"),
        (dict(factor=2, rope_theta=float("inf")), ValueError, "rope_theta must be finite"),
        (dict(factor=2, rope_theta="1e4"), TypeError, "rope_theta must be a number"),
        (dict(factor=2, threshold=float("nan")), TypeError, "threshold must be a number"),
        (dict(factor=2, device="tpu"), ValueError, "'cpu' or 'cuda'"),
        (dict(factor=2, device="nonsense!"), ValueError, "device"),
        (dict(factor=2, inv_freq=np.ones(64, dtype=np.complex128)), TypeError, "real numbers"),
    ],
)
def test_planner_edges_get_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        dk.plan_dprope(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_planner_refuses_cuda_on_a_machine_without_it():
    with pytest.raises(ValueError, match="no usable CUDA device"):
        dk.plan_dprope(factor=2, device="cuda")


def test_numpy_scalars_are_numbers_to_the_planner():
    plain = dk.plan_dprope(head_dim=16, original_max_position=256, factor=4.0, rope_theta=10000.0,
                           threshold=0.0)
    numpy = dk.plan_dprope(head_dim=np.int64(16), original_max_position=np.int32(256), factor=np.float64(4.0),
                           rope_theta=np.float32(10000.0), threshold=np.float64(0.0))
    assert numpy.interpolated_pairs == plain.interpolated_pairs and numpy.factor == 4.0


def test_plan_and_table_disturbance_validate_rope_theta_alike():
    for bad, error in ((1.0, ValueError), (float("nan"), ValueError), ("x", TypeError), (True, TypeError)):
        with pytest.raises(error, match="rope_theta"):
            dk.plan_dprope(head_dim=16, original_max_position=64, factor=2, rope_theta=bad)
        with pytest.raises(error, match="rope_theta"):
            dk.table_disturbance(dk.default_inv_freq(16, 1e4), original_max_position=64, factor=2,
                                 rope_theta=bad)


def test_plan_does_not_share_memory_with_the_callers_table():
    table = dk.default_inv_freq(16, 10000.0)
    plan = dk.plan_dprope(head_dim=16, original_max_position=64, factor=2, inv_freq=table)
    table.mul_(2)
    torch.testing.assert_close(plan.base_inv_freq, dk.default_inv_freq(16, 10000.0))


ROBUST_CASES = {  # (head_dim, rope_theta, L, factor): SmolLM2, LLaMA-2, Llama-3-like, Qwen-like
    "smollm2": (64, 1e5, 8192, 2), "llama2": (128, 1e4, 4096, 4), "llama3": (128, 5e5, 8192, 4),
    "qwen": (128, 1e6, 32768, 4),
}


@pytest.mark.parametrize("case", ROBUST_CASES)
def test_robust_selection_keeps_unresolved_pairs_extrapolated_and_decides_the_rest_as_the_paper(case):
    head_dim, theta, original, factor = ROBUST_CASES[case]
    kw = dict(head_dim=head_dim, rope_theta=theta, original_max_position=original, factor=factor)
    paper, robust = dk.plan_dprope(**kw, selection="paper"), dk.plan_dprope(**kw, selection="robust", ramp=1)
    limit = math.sqrt(original / 360)
    assert robust.resolution_turns == limit
    turns = robust.base_inv_freq.numpy() * original / (2 * math.pi)
    np.testing.assert_array_equal(robust.turns.numpy(), turns)
    resolved = turns <= limit
    np.testing.assert_array_equal(robust.resolved.numpy(), resolved)
    assert not robust.interpolated[~torch.from_numpy(resolved)].any()
    # where the histogram resolves the pair, the choice is the paper's
    np.testing.assert_array_equal(robust.interpolated.numpy()[resolved], paper.interpolated.numpy()[resolved])
    assert paper.rope_config()["dprope_selection"] == "paper"
    assert robust.rope_config()["dprope_selection"] == "robust"


@pytest.mark.parametrize("case", ROBUST_CASES)
def test_robust_selection_does_not_flip_with_one_more_bin(case):
    """The paper's rule on high-frequency pairs follows histogram noise: 360 and 361 bins choose
    differently for SmolLM2; the robust selection does not."""
    head_dim, theta, original, factor = ROBUST_CASES[case]
    kw = dict(head_dim=head_dim, rope_theta=theta, original_max_position=original, factor=factor)
    assert (dk.plan_dprope(**kw, selection="robust", ramp=1).interpolated_pairs
            == dk.plan_dprope(**kw, selection="robust", ramp=1, bins=361).interpolated_pairs)
    if case == "smollm2":
        assert (dk.plan_dprope(**kw, selection="paper").interpolated_pairs
                != dk.plan_dprope(**kw, selection="paper", bins=361).interpolated_pairs)


def test_robust_selection_with_n_hat_chooses_among_resolved_pairs_only():
    kw = dict(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2, selection="robust")
    plan = dk.plan_dprope(**kw, num_interpolated_dims=20)
    assert len(plan.interpolated_pairs) == 10 and plan.resolved[plan.interpolated].all()
    with pytest.raises(ValueError, match="leaves 16 pairs that the histogram resolves"):
        dk.plan_dprope(**kw, num_interpolated_dims=40)
    with pytest.raises(ValueError, match="selection must be one of"):
        dk.plan_dprope(factor=2, selection="noisy")


def test_default_selection_is_robust_except_for_the_papers_procedures():
    assert dk.plan_dprope(factor=4).selection == "robust"
    assert dk.plan_dprope(factor=4, threshold=1e-3).selection == "robust"
    assert dk.plan_dprope(factor=4, num_interpolated_dims=64).selection == "paper"  # n_hat: the paper's rule
    assert dk.plan_dprope(factor=4, precision="reference").selection == "paper"     # the public code's
    assert dk.plan_dprope(factor=4, precision="reference", selection="robust").selection == "robust"


# ---------------------------------------------------------------------------------------------
# a plan's attention factor and the soft resolution cutoff
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [(None, 0.1 * math.log(2) + 1), ("yarn", 0.1 * math.log(2) + 1),
                                             ("entropy", math.sqrt(14 / 13)),  # 1 + ln 2 / ln 2**13
                                             ("none", 1.0), (1.05, 1.05), (np.float32(0.5), 0.5)])
def test_a_plan_carries_its_attention_factor(given, expected):
    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2,
                          attention_factor=given)
    assert plan.attention_factor == pytest.approx(expected, rel=1e-7)
    assert plan.rope_config()["dprope_attention_factor"] == plan.attention_factor
    assert plan.to_dict()["attention_factor"] == plan.attention_factor
    same = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2,
                          attention_factor="none")
    assert torch.equal(plan.inv_freq, same.inv_freq)  # the factor never changes the table


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "loud", True])
def test_a_bad_attention_factor_is_refused(bad):
    with pytest.raises((TypeError, ValueError), match="attention_factor"):
        dk.plan_dprope(head_dim=64, factor=2, attention_factor=bad)


def test_a_config_without_an_attention_factor_rebuilds_with_one():
    """Checkpoints saved before plans carried a factor were trained without one (1.0), whatever the
    default."""
    from dprope_kernels.hf_config import plan_from_config

    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2)
    params = plan.rope_config()
    config = {"head_dim": 64, "hidden_size": 576, "num_attention_heads": 9, "max_position_embeddings": 16384,
              "rope_scaling": params}
    assert plan_from_config(config).attention_factor == plan.attention_factor
    old = dict(params)
    old.pop("dprope_attention_factor")
    assert plan_from_config(dict(config, rope_scaling=old)).attention_factor == 1.0


def test_the_soft_cutoff_blends_pairs_near_the_resolution_in_log_turns():
    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2)  # the default: 4
    hard = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2, ramp=1)
    assert plan.ramp == 4.0 and hard.ramp == 1.0 and "ramp" not in hard.strategy
    cutoff = plan.resolution_turns
    turns = plan.turns.numpy()
    weight = plan.weight.numpy()
    assert (np.all(weight[turns >= 2 * cutoff] == 0)
            and np.all(weight[turns <= cutoff / 2] == hard.weight.numpy()[turns <= cutoff / 2]))
    ramped = (weight > 0) & (weight < 1)
    assert ramped.any() and all(plan.strategy[i] == "ramp" for i in np.flatnonzero(ramped))
    expected = np.clip(np.log(2 * cutoff / turns) / np.log(4), 0, 1)[ramped]
    np.testing.assert_allclose(weight[ramped], expected, rtol=1e-12)
    base = plan.base_inv_freq.numpy()
    np.testing.assert_allclose(plan.inv_freq.numpy()[ramped], (base * (1 - weight + weight / 2))[ramped],
                               rtol=1e-15)
    outside = ~ramped
    assert torch.equal(plan.inv_freq[outside], hard.inv_freq[outside])  # elsewhere the hard plan, bit for bit
    own = dk.table_disturbance(plan.inv_freq, original_max_position=8192, factor=2, rope_theta=1e5)
    np.testing.assert_allclose(plan.pair_disturbance["dprope"].numpy(), own.numpy(), rtol=1e-12)
    assert plan.rope_config()["dprope_ramp"] == 4.0 and "R" in plan.format_table().split("pairs   0-31")[1]


@pytest.mark.parametrize("kwargs", [{"ramp": 0.5}, {"ramp": 4, "selection": "paper"},
                                    {"ramp": 4, "num_interpolated_dims": 20}])
def test_the_soft_cutoff_needs_the_robust_threshold_rule(kwargs):
    with pytest.raises(ValueError, match="ramp"):
        dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2, **kwargs)
    assert dk.plan_dprope(head_dim=64, factor=2, selection="paper").ramp == 1.0  # the other rules: hard


def test_a_config_without_a_ramp_rebuilds_the_hard_cutoff():
    """Checkpoints saved before the soft cutoff existed were trained with the hard one."""
    from dprope_kernels.hf_config import plan_from_config

    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2)
    hard = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2, ramp=1)
    # as such a checkpoint recorded it
    old = {k: v for k, v in hard.rope_config().items() if k != "dprope_ramp"}
    config = {"head_dim": 64, "hidden_size": 576, "num_attention_heads": 9, "max_position_embeddings": 16384,
              "rope_scaling": old}
    rebuilt = plan_from_config(config)
    assert rebuilt.ramp == 1.0 and rebuilt.interpolated_pairs == list(range(16, 32))
    assert torch.equal(rebuilt.inv_freq, hard.inv_freq)
    assert plan_from_config(dict(config, rope_scaling=plan.rope_config())).ramp == 4.0


def test_a_ramped_plan_round_trips_through_its_config():
    from dprope_kernels.hf_config import plan_for_config

    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2, ramp=4,
                          attention_factor=1.03)
    config = {"head_dim": 64, "hidden_size": 576, "num_attention_heads": 9, "max_position_embeddings": 16384,
              "rope_scaling": plan.rope_config()}
    rebuilt = plan_for_config(config)
    assert (torch.equal(rebuilt.inv_freq, plan.inv_freq) and rebuilt.attention_factor == 1.03
            and rebuilt.ramp == 4)


def test_an_extra_candidate_never_scores_below_the_better_end_on_smollm2_settings():
    """What docs/planning.md says of --candidate: a table between interpolation and extrapolation
    disturbs the angle histogram at least as much as the better of the two, so the plan is unchanged."""
    settings = dict(head_dim=64, rope_theta=1e5, original_max_position=8192, target_max_position=16384,
                    selection="paper", threshold=0)
    extras = ["yarn", "ntk", "llama3"]
    plan = dk.plan_dprope(**settings, extra_candidates=extras)
    d = plan.pair_disturbance
    ends = torch.minimum(d["interpolation"], d["extrapolation"])
    for name in extras:
        assert bool((d[name] >= ends).all()), name
    assert torch.equal(plan.inv_freq, dk.plan_dprope(**settings).inv_freq)
