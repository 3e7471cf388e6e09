"""The dprope rope type and the kernel patch on tiny random transformers models (built offline)."""

import math

import pytest
import torch
from conftest import rope_config_kwargs, rope_settings
from numerics import departures

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from dprope_kernels.hf_config import _cached_plan, plan_from_config

transformers = pytest.importorskip("transformers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if unavailable(b, torch.device(DEVICE)) is None]
DPROPE = {"rope_type": "dprope", "factor": 4.0, "original_max_position_embeddings": 128}
SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
# per dtype, the floors of numerics.departures: logits (of the largest logit), relative gradient error
FLOORS = {torch.float32: (2e-4, 1e-3), torch.bfloat16: (0.15, 0.1)}


@pytest.fixture(autouse=True, scope="module")
def registered():
    dk.register_dprope_rope_type()


def tiny_model(family="llama", rope=DPROPE, dtype=torch.float32, seed=0):
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}[family]
    config = config_cls(**SIZES, **rope_config_kwargs(rope), attn_implementation="eager")
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).to(DEVICE, dtype)


def logits_and_grads(model, ids, positions):
    model.zero_grad()
    out = model(ids, position_ids=positions, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_config_builds_the_planned_table():
    model = tiny_model()
    # a minimal hand-written dprope config: the keys it lacks read as before they existed (hard cutoff,
    # factor 1)
    plan = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=128, factor=4.0, ramp=1,
                          attention_factor="none")
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.cpu(), plan.inv_freq.float())
    assert model.model.rotary_emb.attention_scaling == 1.0
    assert plan.interpolated_pairs and len(plan.interpolated_pairs) < 8  # a real mix of both
    full = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=128, factor=4.0)  # every key
    recorded = tiny_model(rope={k: v for k, v in full.rope_config().items()
                                if k != "max_position_embeddings"})
    torch.testing.assert_close(recorded.model.rotary_emb.inv_freq.cpu(), full.inv_freq.float())
    assert recorded.model.rotary_emb.attention_scaling == pytest.approx(full.attention_factor)


def test_config_round_trips_through_save_pretrained(tmp_path):
    options = dict(DPROPE, dprope_bins=180, dprope_num_interpolated_dims=6)
    model = tiny_model(rope=options)
    model.save_pretrained(tmp_path)
    _cached_plan.cache_clear()  # plan afresh inside from_pretrained (which builds on the meta device)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).to(DEVICE)
    for key, value in options.items():
        assert rope_settings(loaded.config)[key] == value
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    assert len(plan_from_config(loaded.config).interpolated_pairs) == 3


def test_plan_rope_config_is_a_valid_transformers_config():
    plan = dk.plan_dprope(head_dim=16, original_max_position=128, factor=4.0)
    config = transformers.LlamaConfig(**SIZES, **rope_config_kwargs(plan.rope_config()))
    assert plan_from_config(config).interpolated_pairs == plan.interpolated_pairs


@pytest.mark.parametrize("params, error, match", [
    ({"rope_type": "dprope", "factor": 4.0}, KeyError, "original_max_position_embeddings"),
    (dict(DPROPE, factor=1.0), ValueError, "factor > 1"),
    (dict(DPROPE, dprope_bogus=1), KeyError, "unknown keys"),
    (dict(DPROPE, dprope_threshold=0.0, dprope_num_interpolated_dims=4), ValueError, "not both"),
    (dict(DPROPE, dprope_selection="noisy"), ValueError, "dprope_selection must be one of"),
    (dict(DPROPE, dprope_attention_factor=0.0), ValueError, "must be a finite positive"),
    (dict(DPROPE, dprope_attention_factor=1e39), ValueError, "float32's normal range"),
    (dict(DPROPE, dprope_attention_factor="yarn"), TypeError, "must be a positive real"),
])
def test_bad_rope_parameters_are_refused(params, error, match):
    # transformers 5 wraps a validator's ValueError in its own StrictDataclassClassValidationError
    with pytest.raises(Exception, match=match) as raised:
        transformers.LlamaConfig(**SIZES, **rope_config_kwargs(params))
    assert isinstance(raised.value, error) or isinstance(raised.value.__cause__, error)


def test_a_checkpoint_whose_selection_differs_is_refused():
    config = transformers.LlamaConfig(**SIZES,
                                      **rope_config_kwargs(dict(DPROPE, dprope_interpolated_pairs=[0])))
    with pytest.raises(ValueError, match="trained with another table"):
        transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patched_model_matches_eager(family, backend, dtype):
    """Patched and stock model of ``dtype``, each judged against the stock model in float64."""
    model = tiny_model(family, dtype=dtype)
    ids = torch.randint(0, SIZES["vocab_size"], (2, 24), device=DEVICE)
    positions = torch.arange(24, device=DEVICE).expand(2, 24) + torch.tensor([[0], [300]], device=DEVICE)
    stock = logits_and_grads(model, ids, positions)
    # the same (dtype-rounded) weights, float64 math and table
    exact = tiny_model(family, dtype=torch.float64)
    exact.load_state_dict({k: v for k, v in model.state_dict().items() if "inv_freq" not in k}, strict=False)
    truth = logits_and_grads(exact, ids, positions)
    dk.apply_dprope_kernels(model, backend=backend)
    try:
        patched = logits_and_grads(model, ids, positions)
    finally:
        dk.revert_dprope_kernels(model)
    logit_floor, grad_floor = FLOORS[dtype]
    failures = departures(stock, patched, truth, logit_floor=logit_floor, grad_floor=grad_floor)
    assert not failures, "; ".join(failures)


def test_patch_is_reversible_and_leaves_other_models_alone():
    import transformers.models.llama.modeling_llama as modeling

    original = modeling.apply_rotary_pos_emb
    patched, plain = tiny_model(seed=1), tiny_model(seed=1)
    ids = torch.randint(0, SIZES["vocab_size"], (1, 16), device=DEVICE)
    with torch.no_grad():
        expected = plain(ids).logits
        dk.apply_dprope_kernels(patched, backend="torch")
        assert modeling.apply_rotary_pos_emb is not original
        torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=0)  # unpatched: original path
        torch.testing.assert_close(patched(ids).logits, expected, rtol=1e-5, atol=1e-5)
        dk.revert_dprope_kernels(patched)
        assert modeling.apply_rotary_pos_emb is original
        torch.testing.assert_close(patched(ids).logits, expected, rtol=0, atol=0)


def _stand_in(func):
    """What the kernels package makes of a hub-kernelizable function (transformers 5.25+ with kernels
    installed): an nn.Module instance whose forward calls the function."""

    class Func(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return func(*args, **kwargs)

    return Func()


def test_a_rotary_function_behind_a_module_stand_in_is_served(monkeypatch):
    import transformers.models.llama.modeling_llama as modeling

    from dprope_kernels.integrations.hf_probe import NotServed, plain_rotary_function

    function = getattr(modeling.apply_rotary_pos_emb, "_dprope_original", modeling.apply_rotary_pos_emb)
    function = plain_rotary_function(function)  # the plain function on any transformers
    stand_in = _stand_in(function)
    assert plain_rotary_function(stand_in) is function
    with pytest.raises(NotServed, match="calls 0 enclosed functions, not one"):
        plain_rotary_function(torch.nn.Identity())
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", stand_in)
    patched, plain = tiny_model(seed=2), tiny_model(seed=2)
    ids = torch.randint(0, SIZES["vocab_size"], (1, 16), device=DEVICE)
    with torch.no_grad():
        expected = plain(ids).logits
        dk.apply_dprope_kernels(patched, backend="torch")
        try:
            assert modeling.apply_rotary_pos_emb is not stand_in
            torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=0)  # through the stand-in
            torch.testing.assert_close(patched(ids).logits, expected, rtol=1e-5, atol=1e-5)
        finally:
            dk.revert_dprope_kernels(patched)
    assert modeling.apply_rotary_pos_emb is stand_in


def test_generation_with_kv_cache_matches():
    model = tiny_model(seed=2).eval()
    prompt = torch.randint(0, SIZES["vocab_size"], (1, 12), device=DEVICE)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    dk.apply_dprope_kernels(model, backend="torch")
    try:
        got = model.generate(prompt, max_new_tokens=8, do_sample=False)
    finally:
        dk.revert_dprope_kernels(model)
    assert torch.equal(got, expected)


def test_gradient_checkpointing_with_patch():
    model = tiny_model(seed=3)
    ids = torch.randint(0, SIZES["vocab_size"], (2, 16), device=DEVICE)
    positions = torch.arange(16, device=DEVICE).expand(2, 16)
    _, grads = logits_and_grads(model, ids, positions)
    model.gradient_checkpointing_enable()
    model.train()
    dk.apply_dprope_kernels(model, backend="torch")
    _, grads_p = logits_and_grads(model, ids, positions)
    dk.revert_dprope_kernels(model)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_p[name], grad, rtol=1e-4, atol=1e-5)


def test_given_table_replaces_the_models_own():
    model = tiny_model(rope={"rope_type": "default"}, seed=4)
    # YaRN's attention factor, by default
    plan = dk.plan_dprope(head_dim=16, original_max_position=128, factor=4.0)
    assert plan.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
    recorded = {k: v for k, v in plan.rope_config().items() if k != "max_position_embeddings"}
    # same weights, the plan's table and factor built by transformers
    planned = tiny_model(rope=recorded, seed=4)
    ids = torch.randint(0, SIZES["vocab_size"], (1, 20), device=DEVICE)
    with torch.no_grad():
        expected = planned(ids).logits
        dk.apply_dprope_kernels(model, plan, backend="torch")
        got = model(ids).logits
    dk.revert_dprope_kernels(model)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_yarn_model_is_served_with_its_attention_factor():
    """YaRN scales cos/sin by 0.1 ln(s) + 1: the kernels serve that factor (they refused such models
    before)."""
    yarn = tiny_model(rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
                      seed=5)
    ids = torch.randint(0, SIZES["vocab_size"], (1, 20), device=DEVICE)
    positions = torch.arange(20, device=DEVICE)[None] + 400  # past the window
    with torch.no_grad():
        expected = yarn(ids, position_ids=positions).logits
        dk.apply_dprope_kernels(yarn, backend="torch")
        try:
            assert yarn.model.rotary_emb._dprope_phases["default"].attention_factor == pytest.approx(
                0.1 * math.log(4) + 1)
            got = yarn(ids, position_ids=positions).logits
        finally:
            dk.revert_dprope_kernels(yarn)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the factor counts
    assert (got - tiny_model(seed=5)(ids, position_ids=positions).logits).abs().max() > 1e-3


def test_unpatchable_models_are_refused():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2,
                                                                vocab_size=50))
    with pytest.raises(TypeError, match="no rotary module that takes position ids"):
        dk.apply_dprope_kernels(gpt2)
    dynamic = tiny_model(rope={"rope_type": "dynamic", "factor": 4.0})
    with pytest.raises(ValueError, match="changes with the sequence length"):
        dk.apply_dprope_kernels(dynamic)
    model = tiny_model()
    dk.apply_dprope_kernels(model, backend="torch")
    with pytest.raises(ValueError, match="patched already"):
        dk.apply_dprope_kernels(model)
    dk.revert_dprope_kernels(model)


def test_a_bf16_rounded_table_is_served_at_full_precision_or_refused():
    """model.to(bfloat16) rounds the rotary inv_freq buffer; the patch serves the config's float32 table
    when the buffer is its rounding, and refuses a rounded table it cannot vouch for."""
    from dprope_kernels.integrations.transformers import _ATTRIBUTE

    full = tiny_model(rope={"rope_type": "default"})
    want = full.model.rotary_emb.inv_freq.clone()
    model = tiny_model(rope={"rope_type": "default"}).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    dk.apply_dprope_kernels(model, backend="torch")
    served = getattr(model.model.rotary_emb, _ATTRIBUTE)["default"].inv_freq
    assert torch.equal(served, want.double().cpu())
    dk.revert_dprope_kernels(model)
    with torch.no_grad():
        model.model.rotary_emb.inv_freq[3] *= 1.5  # no longer the config's table
    with pytest.raises(ValueError, match="stored in torch.bfloat16 \\(rounded\\) and is not the rounding"):
        dk.apply_dprope_kernels(model, backend="torch")


def test_a_selection_round_trips_and_configs_saved_before_selections_keep_theirs(tmp_path):
    robust = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=128, factor=4.0)
    paper = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=128, factor=4.0,
                           selection="paper")
    assert robust.selection == "robust" and robust.interpolated_pairs != paper.interpolated_pairs
    model = tiny_model(rope=robust.rope_config())
    model.save_pretrained(tmp_path)
    _cached_plan.cache_clear()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).to(DEVICE)
    assert plan_from_config(loaded.config).interpolated_pairs == robust.interpolated_pairs
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq.cpu(), robust.inv_freq.float())
    hard = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=128, factor=4.0, ramp=1)
    # no keys: robust, hard
    assert plan_from_config(tiny_model().config).interpolated_pairs == hard.interpolated_pairs
    old = {k: v for k, v in paper.rope_config().items() if k != "dprope_selection"}  # saved before selections
    assert plan_from_config(tiny_model(rope=old).config).interpolated_pairs == paper.interpolated_pairs
    assert plan_from_config(tiny_model(rope=paper.rope_config()).config).selection == "paper"


def test_a_model_freed_without_revert_does_not_block_another_backend():
    """The module-level rotary function stays patched while a patched model lives; once every such
    model is gone (freed, never reverted), another model may be patched with another backend."""
    first = tiny_model()
    dk.apply_dprope_kernels(first, backend="auto")
    second = tiny_model(seed=1)
    with pytest.raises(ValueError,
                       match="patched with backend 'auto' and attention factor 1 for another model"):
        dk.apply_dprope_kernels(second, backend="torch")
    del first  # in a reference cycle (its rotary's patched forward): the patch collects it
    dk.apply_dprope_kernels(second, backend="torch")
    dk.revert_dprope_kernels(second)
