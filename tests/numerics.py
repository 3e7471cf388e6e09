"""Judging a patched model against the truth, with tolerances derived from the reference's own error.

The patched and the stock model both compute in float32, and their rounding differs (the patch
rotates with exact angles, in another order). Where a gradient comes from heavy cancellation
(DiffLlama's ``lambda_*`` parameters: norm ~1e-6) that rounding is large, and how large depends on
the CPU's floating-point code paths: on one x86-64 machine the stock fp32 gradient is 2.7e-3 from
the float64 one, on another 3e-4. A fixed tolerance between patched and stock fp32 is then below
the noise of the reference itself.

So each output is judged against the stock model run in float64 (the truth): the patched output
may be at most ``NOISE_MULTIPLE`` times as far from it as the stock output of the same dtype is
(the reference's own error), and is never asked to be closer than a floor (the patch's own
float32 rounding). A wrong table moves outputs by orders of magnitude more and still fails
(``test_model_families.py::test_a_wrong_table_fails_against_the_truth``).
"""

from __future__ import annotations

import torch

NOISE_MULTIPLE = 4


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in float64."""
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm().clamp(min=1e-300))


def departures(stock, patched, truth, *, logit_floor: float, grad_floor: float) -> list[str]:
    """What in ``patched`` is further from ``truth`` than the noise of ``stock`` allows (empty: none).

    Each argument is ``(logits, {parameter name: gradient})``; ``stock`` and ``patched`` in the
    dtype under test, ``truth`` the stock model's in float64. Logits are judged by the largest
    absolute difference (the floor relative to the largest logit), gradients by the relative norm.
    """
    (logits, grads), (logits_p, grads_p), (logits_t, grads_t) = stock, patched, truth
    found = []
    if grads.keys() != grads_p.keys() or grads.keys() != grads_t.keys():
        found.append(f"parameters with gradients differ: {sorted(grads.keys() ^ grads_p.keys())}")
    scale = max(1.0, float(logits_t.abs().max()))
    noise = float((logits.double().cpu() - logits_t.double().cpu()).abs().max())
    error = float((logits_p.double().cpu() - logits_t.double().cpu()).abs().max())
    allowed = max(logit_floor * scale, NOISE_MULTIPLE * noise)
    if not error <= allowed:
        found.append(f"logits: {error:.3g} from float64 (stock: {noise:.3g}; allowed {allowed:.3g})")
    for name in sorted(grads.keys() & grads_p.keys() & grads_t.keys()):
        noise, error = relative(grads[name], grads_t[name]), relative(grads_p[name], grads_t[name])
        allowed = max(grad_floor, NOISE_MULTIPLE * noise)
        if not error <= allowed:
            found.append(f"{name}: relative gradient error {error:.3g} from float64 (stock: {noise:.3g}; "
                         f"allowed {allowed:.3g})")
    return found
