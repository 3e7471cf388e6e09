"""apply_rope called exactly as HF, Megatron and flash-attn code call their rotary op: the layouts
work without a copy (the kernel gets views of the caller's memory), forward and backward, both
pairings, on every backend."""

import math

import pytest
import torch
from test_rope import BACKENDS, DEVICE, check_close, reference_rope, table

import dprope_kernels as dk
from dprope_kernels.ops import rope as rope_ops
from dprope_kernels.parallel import context_parallel_positions


@pytest.fixture
def launched(monkeypatch):
    """The q/k tensors each kernel launch received."""
    calls = []
    real = rope_ops._launch

    def spy(backend, q, k, *rest):
        calls.append((q, k))
        return real(backend, q, k, *rest)

    monkeypatch.setattr(rope_ops, "_launch", spy)
    return calls


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def backward_matches(q, k, inv, positions, rotate, **kwargs):
    """Gradients through ``rotate`` equal those through the [B, T, H, D] reference call."""
    g = torch.Generator(device=q.device).manual_seed(0)  # the same cotangents in every call
    gq = torch.randn(q.shape, generator=g, device=q.device, dtype=q.dtype)
    gk = torch.randn(k.shape, generator=g, device=k.device, dtype=k.dtype)
    qa, ka = q.detach().requires_grad_(), k.detach().requires_grad_()
    oq, ok = rotate(qa, ka)
    torch.autograd.backward((oq, ok), (gq, gk))
    return qa.grad, ka.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_attention_layout(backend, interleaved, dtype, launched):
    """HF: q/k [B, H, T, D] from .view().transpose(1, 2), position_ids [1, T]."""
    B, T, Hq, Hk, D = 2, 9, 4, 2, 32
    inv = table(D)
    hidden = torch.randn(B, T, Hq * D, device=DEVICE).to(dtype)
    q = hidden.view(B, T, Hq, D).transpose(1, 2)  # [B, H, T, D], non-contiguous
    k = torch.randn(B, T, Hk * D, device=DEVICE).to(dtype).view(B, T, Hk, D).transpose(1, 2)
    position_ids = torch.arange(T, device=DEVICE)[None] + 700
    oq, ok = dk.apply_rope(q.transpose(1, 2), k.transpose(1, 2), inv, position_ids, interleaved=interleaved,
                           backend=backend)
    oq, ok = oq.transpose(1, 2), ok.transpose(1, 2)  # back to [B, H, T, D]
    assert same_memory(launched[0][0], hidden), "the kernel must read the caller's q in place"
    assert oq.shape == q.shape and oq.transpose(1, 2).stride() == q.transpose(1, 2).stride()
    pos = position_ids.expand(B, T)
    check_close(oq.transpose(1, 2), reference_rope(q.transpose(1, 2), inv, pos, interleaved), dtype)
    check_close(ok.transpose(1, 2), reference_rope(k.transpose(1, 2), inv, pos, interleaved), dtype)
    if dtype == torch.float32:
        got = backward_matches(q, k, inv, pos, lambda a, b: tuple(
            t.transpose(1, 2) for t in dk.apply_rope(a.transpose(1, 2), b.transpose(1, 2), inv, position_ids,
                                                     interleaved=interleaved, backend=backend)))
        want = backward_matches(q, k, inv, pos, lambda a, b: tuple(
            t.transpose(1, 2) for t in dk.apply_rope(a.transpose(1, 2).contiguous(),
                                                     b.transpose(1, 2).contiguous(), inv, pos,
                                                     interleaved=interleaved, backend="torch")))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_megatron_sbhd_with_context_parallel_positions(backend, interleaved, launched):
    """Megatron: q/k [T_local, B, H, D] (sbhd); a context-parallel rank holds zigzag chunks."""
    seq_len, world, B, Hq, Hk, D = 32, 2, 3, 4, 1, 16
    inv = table(D)
    g = torch.Generator().manual_seed(0)
    q_full = torch.randn(seq_len, B, Hq, D, generator=g).to(DEVICE)
    k_full = torch.randn(seq_len, B, Hk, D, generator=g).to(DEVICE)
    whole_q, whole_k = dk.apply_rope(q_full.transpose(0, 1), k_full.transpose(0, 1), inv,
                                     interleaved=interleaved, backend=backend)

    def rotate_shard(positions):
        return lambda a, b: tuple(
            t.transpose(0, 1) for t in dk.apply_rope(a.transpose(0, 1), b.transpose(0, 1), inv, positions,
                                                     interleaved=interleaved, backend=backend))

    for rank in range(world):
        positions = context_parallel_positions(seq_len, rank, world, device=DEVICE)
        q, k = q_full[positions], k_full[positions]  # this rank's sbhd shard
        launched.clear()
        oq, ok = dk.apply_rope(q.transpose(0, 1), k.transpose(0, 1), inv, positions, interleaved=interleaved,
                               backend=backend)
        assert same_memory(launched[0][0], q) and same_memory(launched[0][1], k)
        torch.testing.assert_close(oq.transpose(0, 1), whole_q.transpose(0, 1)[positions], rtol=0, atol=0)
        torch.testing.assert_close(ok.transpose(0, 1), whole_k.transpose(0, 1)[positions], rtol=0, atol=0)
        gq, gk = backward_matches(q, k, inv, positions, rotate_shard(positions))
        assert gq.shape == q.shape and torch.isfinite(gq).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_flash_attn_varlen_packing(backend, interleaved, launched):
    """flash-attn: packed [total_tokens, H, D] with cu_seqlens (int32), each document from position 0."""
    lengths = [5, 1, 11, 3]
    cu = torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(DEVICE, torch.int32)
    total, D = sum(lengths), 32
    inv = table(D)
    qkv = torch.randn(total, 3 * 4 * D, device=DEVICE)  # a fused qkv projection, split by views
    q = qkv[:, : 2 * D].view(total, 2, D)
    k = qkv[:, 2 * D: 3 * D].view(total, 1, D)
    oq, ok = dk.apply_rope(q, k, inv, cu_seqlens=cu, interleaved=interleaved, backend=backend)
    assert same_memory(launched[0][0], qkv) and same_memory(launched[0][1], qkv)
    start = 0
    for n in lengths:
        rq, rk = dk.apply_rope(q[start:start + n][None].contiguous(), k[start:start + n][None].contiguous(),
                               inv, interleaved=interleaved, backend=backend)
        torch.testing.assert_close(oq[start:start + n], rq[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(ok[start:start + n], rk[0], rtol=0, atol=1e-6)
        start += n
    gq, gk = backward_matches(q, k, inv, None,
                              lambda a, b: dk.apply_rope(a, b, inv, cu_seqlens=cu, interleaved=interleaved,
                                                         backend=backend))
    assert gq.shape == q.shape and torch.isfinite(gq).all()


def test_rotary_embedding_from_an_hf_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096)
    rope = dk.DPRoPERotaryEmbedding.from_config(config, target_max_position=16384)
    plan = dk.plan_dprope(head_dim=64, original_max_position=4096, target_max_position=16384)
    torch.testing.assert_close(rope.inv_freq, plan.inv_freq)
    as_dict = dk.DPRoPERotaryEmbedding.from_config(config.to_dict(), factor=4.0, num_interpolated_dims=32)
    assert int((as_dict.inv_freq != plan.base_inv_freq).sum()) == 16
    dk.register_dprope_rope_type()
    from conftest import rope_config_kwargs

    planned = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=16384,
                                       **rope_config_kwargs(plan.rope_config()))
    torch.testing.assert_close(dk.DPRoPERotaryEmbedding.from_config(planned).inv_freq, plan.inv_freq)
    with pytest.raises(ValueError, match="target_max_position or factor"):
        dk.DPRoPERotaryEmbedding.from_config(config)
    with pytest.raises(ValueError, match="has no 'max_position_embeddings'"):
        dk.DPRoPERotaryEmbedding.from_config({"hidden_size": 256, "num_attention_heads": 4}, factor=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["glm", "phi"])
def test_attention_factor_equals_transformers_scaled_cos_sin_with_partial_rotary(backend, family):
    """transformers scales cos and sin by the rope's attention factor and leaves the pass-through dims
    alone: GLM (GPT-J pairs, half the head rotated) and Phi (NeoX halves on the first rotary dims)."""
    hf = pytest.importorskip(f"transformers.models.{family}.modeling_{family}")
    B, T, Hq, Hk, D, rotary_dim, factor = 2, 7, 3, 1, 64, 32, 0.1 * math.log(4.0) + 1
    inv = table(rotary_dim)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Hq, T, D, generator=g, dtype=torch.float64)  # HF's [B, H, T, D]
    k = torch.randn(B, Hk, T, D, generator=g, dtype=torch.float64)
    position_ids = torch.arange(T)[None] + 1500
    freqs = position_ids[..., None].double() * torch.as_tensor(inv, dtype=torch.float64)  # HF's rotary module
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * factor, emb.sin() * factor
    if family == "glm":
        want_q, want_k = hf.apply_rotary_pos_emb(q, k, cos, sin)
    else:  # PhiAttention: rotate the first rotary dims, concatenate the rest
        rq, rk = hf.apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
        want_q, want_k = torch.cat((rq, q[..., rotary_dim:]), -1), torch.cat((rk, k[..., rotary_dim:]), -1)
    dtype = torch.float64 if backend == "torch" else torch.float32
    rope = dk.DPRoPERotaryEmbedding(inv, interleaved=family == "glm", backend=backend,
                                    attention_factor=factor)
    got_q, got_k = rope(*(x.transpose(1, 2).to(DEVICE, dtype) for x in (q, k)), position_ids.to(DEVICE))
    for got, want in ((got_q, want_q), (got_k, want_k)):
        torch.testing.assert_close(got.transpose(1, 2).double().cpu(), want, rtol=1e-5, atol=1e-5)
