"""Every model family is served right or refused: never patched and different.

Tiny random models of 40+ transformers families and rope variants, built offline from their
configs. Each case asserts one of two outcomes: "served and equal" (fp32 logits, every parameter
gradient and greedy generation match the unpatched model) or "refused with a clear error" (the
message names the reason, and nothing was changed).
"""

import sys

import pytest
import torch
from conftest import rope_config_kwargs
from hf_families import FAMILIES, build
from numerics import departures

import dprope_kernels as dk

transformers = pytest.importorskip("transformers")

MAJOR = int(transformers.__version__.split(".")[0])
ROPE_VARIANTS = {  # case -> (model_type, rope settings)
    "llama:linear": ("llama", {"rope_type": "linear", "factor": 4.0}),
    "llama:llama3": ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama:dprope": ("llama", {"rope_type": "dprope", "factor": 4.0, "original_max_position_embeddings": 64}),
    "llama:yarn": ("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "llama:dynamic": ("llama", {"rope_type": "dynamic", "factor": 4.0}),
    "phi3:longrope": ("phi3", {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
                               "original_max_position_embeddings": 64}),
}
if MAJOR < 5:  # 4.x Phi-3 wants exactly {type, short_factor, long_factor}, the original length in the config
    ROPE_VARIANTS["phi3:longrope"] = ("phi3", {"type": "longrope", "short_factor": [1.0] * 8,
                                               "long_factor": [4.0] * 8})
REFUSED = {  # case -> what the error must say (YaRN's attention factor is served: gpt_oss, llama:yarn)
    "deepseek_v2": "freqs_cis",
    # 4.x: none; 5.24+: a sin/cos table
    "gptj": "no rotary module that takes position ids|holds no frequency table",
    "llama:dynamic": "changes with the sequence length",
    "phi3:longrope": "changes with the sequence length",
}
if MAJOR < 5:
    # 4.x PhiMoE's rotary takes seq_len, not position_ids
    REFUSED["phimoe"] = "no rotary module that takes position ids"
    REFUSED["phi3:longrope"] += "|not a rotation"  # 4.x Phi-3 scales inside its LongRoPE module
if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 48):
    # its rotary takes seq_len (and cannot index past it)
    REFUSED["mixtral"] = "no rotary module that takes position ids"
CASES = sorted(set(FAMILIES) | set(ROPE_VARIANTS) | {"deepseek_v3:halves"})
SERVED = [c for c in CASES if c not in REFUSED]
FUSED_FAMILIES = ["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "granite", "olmo2", "phi3",
                  "gemma3_text", "cohere"]


@pytest.fixture(autouse=True, scope="module")
def registered():
    dk.register_dprope_rope_type()


def make(case: str, dtype=torch.float32, seed=0):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    family = ROPE_VARIANTS[case][0] if case in ROPE_VARIANTS else case.split(":")[0]
    if family not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    if case in ROPE_VARIANTS:
        family, rope = ROPE_VARIANTS[case]
        extra = {"original_max_position_embeddings": 64} if MAJOR < 5 and case == "phi3:longrope" else {}
        return build(family, dtype, seed, **rope_config_kwargs(rope), **extra)
    if case == "deepseek_v3:halves":
        return build("deepseek_v3", dtype, seed, rope_interleave=False)
    return build(case, dtype, seed)


def run(model, ids, positions):
    model.zero_grad(set_to_none=True)
    out = model(ids, position_ids=positions, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def greedy(model, prompt):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    positions = torch.arange(12).expand(2, 12) + torch.tensor([[0], [300]])  # the second row past the window
    return ids, positions


def truth(case):
    """Logits and gradients of the stock model of ``case`` in float64, on :func:`inputs`."""
    model = make(case, dtype=torch.float64)
    # transformers 5's grouped_mm experts have no float64 kernel
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    return run(model, *inputs())


def assert_same(stock, patched, reference):
    """``patched`` (fp32) is as close to the float64 ``reference`` as ``stock`` (fp32) is, up to the
    noise multiple; floors: 2e-5 of the largest logit, 1e-4 relative gradient error (numerics.py)."""
    failures = departures(stock, patched, reference, logit_floor=2e-5, grad_floor=1e-4)
    assert not failures, "; ".join(failures)


def assert_identical(stock, again):
    (logits, grads), (logits_a, grads_a) = stock, again
    assert torch.equal(logits, logits_a)
    assert grads.keys() == grads_a.keys() and all(torch.equal(grads[n], grads_a[n]) for n in grads)


def module_functions(model):
    module = sys.modules[type(model).__module__]
    return {k: v for k, v in vars(module).items() if k.startswith("apply_rotary")}


@pytest.mark.parametrize("case", SERVED)
def test_family_is_served_and_equal(case):
    model = make(case)
    ids, positions = inputs()
    stock = run(model, ids, positions)
    expected_tokens = greedy(model.eval(), ids[:1, :5])
    dk.apply_dprope_kernels(model, backend="torch")
    try:
        assert_same(stock, run(model.train(), ids, positions), truth(case))
        assert torch.equal(greedy(model.eval(), ids[:1, :5]), expected_tokens)
    finally:
        dk.revert_dprope_kernels(model)
    assert_identical(stock, run(model.train(), ids, positions))


@pytest.mark.parametrize("case", ["diffllama", "qwen2"])
def test_a_wrong_table_fails_against_the_truth(case):
    """The noise-derived tolerance still catches a real mistake: the model's own table with its
    highest frequency off by 1e-4 (relative), or a DPRoPE table in place of the model's."""
    model = make(case)
    ids, positions = inputs()
    stock, reference = run(model, ids, positions), truth(case)
    own = model.model.rotary_emb.inv_freq.double()
    nudged = own * torch.tensor([1.0001] + [1.0] * (own.numel() - 1), dtype=torch.float64)
    for wrong in (nudged, dk.plan_dprope(head_dim=16, original_max_position=64, factor=4)):
        dk.apply_dprope_kernels(model, wrong, backend="torch")
        try:
            patched = run(model, ids, positions)
        finally:
            dk.revert_dprope_kernels(model)
        assert departures(stock, patched, reference, logit_floor=2e-5, grad_floor=1e-4)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_family_is_refused_with_a_clear_error(case):
    model = make(case)
    before = module_functions(model)
    with pytest.raises((TypeError, ValueError), match=REFUSED[case]) as raised:
        dk.apply_dprope_kernels(model, backend="torch")
    assert len(str(raised.value)) > 40  # a sentence, not a bare key
    assert module_functions(model) == before, "a refused model's modeling module must be untouched"
    assert not any(hasattr(m, "_dprope_phases") or "forward" in m.__dict__ for m in model.modules())


def test_matrix_covers_at_least_25_families():
    assert len({c.split(":")[0] for c in SERVED}) >= 25
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", ["cohere", "glm", "deepseek_v3", "gemma3_text"])
def test_interleaved_and_layer_type_families_on_triton(case):
    """GPT-J pairing, partial rotary, GPT-J in / NeoX out, per-layer-type tables: the Triton kernel too."""
    assert_triton_patch_matches_eager(case)


def assert_triton_patch_matches_eager(case, **patch_options):
    from dprope_kernels.backends import unavailable

    if unavailable("triton", torch.device("cpu")) is not None:
        pytest.skip("triton backend unavailable")
    model = make(case)
    ids, positions = inputs()
    stock = run(model, ids, positions)
    dk.apply_dprope_kernels(model, backend="triton", **patch_options)
    try:
        assert_same(stock, run(model, ids, positions), truth(case))
    finally:
        dk.revert_dprope_kernels(model)


def test_a_table_that_does_not_fit_the_model_is_refused():
    model = make("phi")  # partial rotary: 8 of 16 dims
    with pytest.raises(ValueError, match="rotates 8 dims per head"):
        dk.apply_dprope_kernels(model, dk.plan_dprope(head_dim=16, original_max_position=64, factor=4))
    dk.apply_dprope_kernels(model, dk.plan_dprope(head_dim=8, original_max_position=64, factor=4),
                            backend="torch")
    dk.revert_dprope_kernels(model)


def test_several_tables_need_a_mapping():
    model = make("gemma3_text")  # local layers at base 1e4, global ones at 1e6
    plan = dk.plan_dprope(head_dim=16, original_max_position=64, factor=4, attention_factor="none")
    with pytest.raises(ValueError, match="layer_type"):
        dk.apply_dprope_kernels(model, plan, backend="torch")
    ids, positions = inputs()
    if MAJOR >= 5:  # one rotary module with a table per layer type
        mapping = {"sliding_attention": model.model.rotary_emb.sliding_attention_inv_freq,
                   "full_attention": plan}
    else:  # a rotary module per table
        mapping = {"model.rotary_emb_local": model.model.rotary_emb_local.inv_freq, "model.rotary_emb": plan}
    dk.apply_dprope_kernels(model, mapping, backend="torch")
    try:
        with torch.no_grad():
            model(ids, position_ids=positions)
    finally:
        dk.revert_dprope_kernels(model)
    # one factor on cos/sin per modeling module: a plan with YaRN's for the global layers only is refused
    warm = dk.plan_dprope(head_dim=16, original_max_position=64, factor=4, attention_factor="yarn")
    with pytest.raises(ValueError, match="different attention factors"):
        dk.apply_dprope_kernels(model,
                                dict(mapping, **{next(k for k in mapping if mapping[k] is plan): warm}),
                                backend="torch")
    assert not hasattr(model, "_dprope_patch")


# ---------------------------------------------------------------------------------------------
# the fused projection inside the model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_fused_projection_matches_eager(family):
    if family in REFUSED:
        pytest.skip(f"transformers {transformers.__version__} refuses {family} (its own rotary cannot take "
                    f"position ids)")
    model = make(family)
    ids, positions = inputs()
    stock, reference = run(model, ids, positions), truth(family)
    expected_tokens = greedy(model.eval(), ids[:1, :5])
    params = {n: p for n, p in model.named_parameters()}
    state_keys = list(model.state_dict())
    dk.apply_dprope_kernels(model, backend="torch", fused_projection=True)
    try:
        # the model's own parameters, same objects
        assert {n: p for n, p in model.named_parameters()} == params
        assert list(model.state_dict()) == state_keys
        assert_same(stock, run(model.train(), ids, positions), reference)
        assert torch.equal(greedy(model.eval(), ids[:1, :5]), expected_tokens)  # KV-cache generation
        model.gradient_checkpointing_enable()
        assert_same(stock, run(model.train(), ids, positions), reference)
    finally:
        dk.revert_dprope_kernels(model)
    assert not any("forward" in m.__dict__ for m in model.modules()), "revert restores every forward"


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_fused_projection_under_torch_compile(family):
    """The fused attention's stand-in calls leave no module attribute to add or delete inside a
    compiled forward (torch.compile could not replay a deleted ``forward``)."""
    if family in REFUSED:
        pytest.skip(f"transformers {transformers.__version__} refuses {family}")
    model = make(family).eval()
    ids, positions = inputs()
    with torch.no_grad():
        expected = model(ids, position_ids=positions).logits
    dk.apply_dprope_kernels(model, backend="torch", fused_projection=True)
    try:
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            got = compiled(ids, position_ids=positions).logits
            again = compiled(ids, position_ids=positions).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(again, got, rtol=0, atol=0)
    finally:
        dk.revert_dprope_kernels(model)
        torch._dynamo.reset()
    assert not any("forward" in m.__dict__ for m in model.modules()), "revert restores every forward"


def test_unknown_backend_is_refused_at_patch_time():
    model = make("llama")
    before = module_functions(model)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        dk.apply_dprope_kernels(model, backend="bogus")
    assert module_functions(model) == before


@pytest.mark.parametrize("family", ["llama", "qwen3", "olmo2", "phi3"])
def test_fused_projection_on_triton(family):
    assert_triton_patch_matches_eager(family, fused_projection=True)


@pytest.mark.parametrize("case, backend, match", [
    ("glm", "torch", "partial rotary"),
    ("deepseek_v3", "torch", "pairs GPT-J in, NeoX out|no int head_dim|no q_proj"),
    ("olmo2", "cuda", "across heads, which the CUDA fused projection does not"),
])
def test_fused_projection_refuses_what_it_cannot_fuse(case, backend, match):
    model = make(case)
    before = module_functions(model)
    with pytest.raises(ValueError, match=match):
        dk.apply_dprope_kernels(model, backend=backend, fused_projection=True)
    assert module_functions(model) == before
    dk.apply_dprope_kernels(model, backend="torch")  # the rope-only patch still serves it
    dk.revert_dprope_kernels(model)
