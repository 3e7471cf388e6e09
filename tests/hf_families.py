"""Tiny random transformers models of many families, built offline from their configs."""

import torch

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, head_dim=16, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
DROP = object()  # removes a SMALL key for a config that does not take it
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)
# dense layers only: transformers 4.57's DeepSeek-V3 experts (router pinned to float32) do not run in float64,
# which the family tests' truth needs; the experts never see the rotary
_MLA = dict(head_dim=DROP, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
            first_k_dense_replace=2, moe_intermediate_size=32, n_group=1, topk_group=1)

# model_type -> config overrides
FAMILIES = {
    "llama": {}, "mistral": {}, "mixtral": _MOE, "ministral": {}, "qwen2": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "qwen3": {}, "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "granite": {}, "granitemoe": _MOE, "olmo": {}, "olmo2": {},
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "phi": dict(partial_rotary_factor=0.5), "phi3": {}, "phimoe": _MOE, "gemma": {}, "gemma2": {},
    "gemma3_text": dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"]), "cohere": {},
    "cohere2": dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"]), "glm": {},
    "glm4": {},
    "ernie4_5": {}, "helium": {}, "stablelm": {}, "gpt_neox": {}, "persimmon": {}, "starcoder2": {},
    "deepseek_v3": _MLA, "deepseek_v2": _MLA, "exaone4": {}, "smollm3": {}, "seed_oss": {}, "arcee": {},
    "nemotron": {}, "falcon": dict(head_dim=DROP, new_decoder_architecture=True, num_kv_heads=2),
    "bitnet": {},
    "hunyuan_v1_dense": {}, "jetmoe": {}, "diffllama": {}, "gpt_oss": _MOE,
    "gptj": dict(head_dim=DROP, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256),
}


def build(model_type: str, dtype=torch.float32, seed: int = 0, **overrides):
    """A 2-layer random model of ``model_type`` with eager attention, in ``dtype``, without dropout
    (so train mode is deterministic)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(SMALL, **FAMILIES[model_type.split(":")[0]], **overrides)
    kwargs = {k: v for k, v in kwargs.items() if v is not DROP}
    config = AutoConfig.for_model(model_type.split(":")[0], **kwargs)
    for name, value in list(vars(config).items()):
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(dtype)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model
