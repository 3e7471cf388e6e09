"""Every integration path keeps its tensors on the model's device: on a pretend accelerator
(tests/pretend_device.py), where mixing in a CPU tensor fails as it does on a GPU. The first GPU run
found the fused drop-in's self-test building cos/sin on the CPU beside a CUDA model, and a model
built under ``with torch.device("cuda")`` with rope_type "dprope" keeping its table on the CPU."""

import pytest
import torch
from conftest import rope_config_kwargs
from pretend_device import DEVICE, OnDevice, pretend_device

import dprope_kernels as dk

transformers = pytest.importorskip("transformers")

PLAN = dk.plan_dprope(head_dim=16, original_max_position=64, factor=4)


@pytest.fixture(autouse=True)
def self_tests_run_again(monkeypatch):
    """The fused drop-in self-tests each attention class once per process: here, once per test."""
    from dprope_kernels.integrations import transformers as integration

    monkeypatch.setattr(integration, "_SELF_TESTED", set())


def llama(rope: dict | None = None, **extra):
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=2, intermediate_size=128, vocab_size=101,
                                      max_position_embeddings=256, use_cache=False, **extra,
                                      **rope_config_kwargs(rope or {"rope_type": "default"}))
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def on_device(t: torch.Tensor) -> bool:
    return isinstance(t, OnDevice) and t.device == DEVICE


def step(model, ids) -> torch.Tensor:
    """A forward and a backward; the logits (on the CPU) and every gradient on the device."""
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    assert on_device(logits)
    logits.float().square().mean().backward()
    assert all(on_device(p.grad) for p in model.parameters() if p.grad is not None)
    return logits.detach().cpu()


def placed_llama(placed: str):
    """A dprope-rope-type Llama built on the pretend device, or built on the CPU and moved there."""
    dk.register_dprope_rope_type()
    if placed == "built on the device":
        with torch.device(DEVICE):
            return llama(PLAN.rope_config())
    return llama(PLAN.rope_config()).to(DEVICE)


def patched_step(model, ids, **options) -> torch.Tensor:
    """:func:`step` with the model patched by ``apply_dprope_kernels(**options)``, reverted after."""
    dk.apply_dprope_kernels(model, **options)
    try:
        return step(model, ids)
    finally:
        dk.revert_dprope_kernels(model)


def test_the_pretend_device_fails_where_a_gpu_fails():
    with pretend_device():
        x = torch.ones(3, device=DEVICE)
        assert on_device(x * 2) and on_device(torch.tensor([1.0], device=DEVICE) + x)
        assert on_device(x + torch.tensor(2.0))  # a 0-dim CPU tensor is a scalar, as on CUDA
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3)


@pytest.mark.parametrize("placed", ["built on the device", "moved there"])
def test_the_rope_type_builds_its_table_on_the_models_device(placed):
    with pretend_device():
        model = placed_llama(placed)
        assert on_device(model.model.rotary_emb.inv_freq)
        step(model, torch.arange(12, device=DEVICE).reshape(1, 12) % 101)


@pytest.mark.parametrize("fused", [False, True], ids=["rotary op", "fused projection"])
@pytest.mark.parametrize("placed", ["built on the device", "moved there"])
def test_the_patch_runs_on_the_models_device(fused, placed):
    with pretend_device():
        model = placed_llama(placed)
        ids = (torch.arange(12, device=DEVICE).reshape(1, 12) * 7) % 101
        before = step(model, ids)
        patched = patched_step(model, ids, backend="auto", fused_projection=fused)
    torch.testing.assert_close(patched, before, rtol=1e-4, atol=1e-4)


def test_the_patch_serves_a_model_whose_table_stayed_on_the_cpu():
    """transformers moves a rotary table that is not on x's device on every call; the patch must too."""
    with pretend_device():
        model = llama().to(DEVICE)
        rotary = model.model.rotary_emb
        rotary.inv_freq = rotary.inv_freq.cpu()  # as a table left behind by a custom placement
        ids = torch.arange(10, device=DEVICE).reshape(1, 10)
        try:
            before = step(model, ids)
        except RuntimeError as err:  # transformers 4.45 does not move the table itself: nothing to match
            pytest.skip(f"this transformers' own forward fails so: {err}")
        patched = patched_step(model, ids, fused_projection=True)
    torch.testing.assert_close(patched, before, rtol=1e-4, atol=1e-4)


def test_the_modules_follow_to():
    torch.manual_seed(1)
    q, k = torch.randn(2, 5, 4, 16), torch.randn(2, 5, 2, 16)
    rotary = dk.DPRoPERotaryEmbedding(PLAN)
    want = rotary(q, k, torch.arange(5) + 100)
    attention = llama().model.layers[0].self_attn
    hidden = torch.randn(2, 5, 64)
    fused = dk.FusedQKRopeProjection.from_attention(attention, PLAN)
    want_fused = fused(hidden, torch.arange(5) + 100)
    with pretend_device():
        rotary.to(DEVICE)
        assert on_device(rotary.phases)
        got = rotary(q.to(DEVICE), k.to(DEVICE), torch.arange(5, device=DEVICE) + 100)
        attention.to(DEVICE)
        got_fused = fused(hidden.to(DEVICE), torch.arange(5, device=DEVICE) + 100)
        made = dk.FusedQKRopeProjection(64, 4, 2, 16, PLAN, device=DEVICE)
        assert all(on_device(t) for t in (*made.parameters(), made.phases))
        assert all(on_device(t) for t in (*got, *got_fused))
    for a, b in zip((*got, *got_fused), (*want, *want_fused)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_ops_take_positions_and_tables_from_the_cpu_or_refuse_them_clearly():
    """A CPU position tensor beside device q is the caller's mix-up: refused by name, as on CUDA."""
    q = torch.randn(1, 4, 2, 16)
    with pretend_device():
        qd = q.to(DEVICE)
        out, _ = dk.apply_rope(qd, None, PLAN.inv_freq, 7)  # an int start: built on q's device
        assert on_device(out)
        out, _ = dk.apply_rope(qd, None, dk.phase_tensor(PLAN.inv_freq), torch.arange(4, device=DEVICE))
        assert on_device(out)  # a CPU phase table moves to q's device
        with pytest.raises(ValueError, match="positions"):
            dk.apply_rope(qd, None, PLAN.inv_freq, torch.arange(4))
