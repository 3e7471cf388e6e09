"""What serving engines derive from an exported config, mirrored from their source (they cannot run here).

Test support for tests/test_export.py: vLLM, SGLang and TGI read ``rope_type: "longrope"`` configs
with their Phi-3 LongRoPE classes; :func:`engine_rope` computes what each builds, following the
files in :data:`ENGINE_SOURCES`.
"""

import math

import torch

from dprope_kernels.export import ExportError

ENGINES = ("vllm", "sglang", "tgi")
ENGINE_SOURCES = {
    "vllm": "vllm/transformers_utils/config.py (patch_rope_parameters: a top-level "
            "original_max_position_embeddings overrides the rope dict's), "
            "vllm/model_executor/layers/rotary_embedding/__init__.py (get_rope: "
            "'longrope' -> Phi3LongRoPEScaledRotaryEmbedding with max_position = max_position_embeddings), "
            "rotary_embedding/phi3_long_rope_scaled_rope.py (mscale, factors), vllm/config/model.py "
            "(_get_and_verify_max_len: longrope does not multiply the length)",
    "sglang": "python/sglang/srt/layers/rotary_embedding/factory.py (get_rope: 'longrope' -> "
              "Phi3LongRoPEScaledRotaryEmbedding, original from the rope dict, default max_position), "
              "rotary_embedding/rope_variant.py (mscale, factors, long cache once a position passes "
              "original)",
    "tgi": "server/text_generation_server/layers/rotary.py (PositionRotaryEmbedding.static: 'longrope' reads "
           "the top-level config.original_max_position_embeddings; SuRotaryEmbedding scales cos/sin; with "
           "short_mscale and long_mscale it builds Phi3LongRoPEScaledRotaryEmbedding, which multiplies the "
           "frequencies by them)",
}


def engine_rope(config: dict, engine: str) -> dict:
    """What ``engine`` builds from a ``config.json`` dict with ``rope_type: "longrope"``, mirroring its
    source.

    Returns ``{"inv_freq_short", "inv_freq_long"}`` (float32 tables used below / past the original
    length), ``"mscale"`` (the factor on cos and sin), ``"original"`` and ``"max_position"``. Raises
    :class:`ExportError` where the engine would fail on the config. Sources: :data:`ENGINE_SOURCES`.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    kind = params.get("rope_type", params.get("type"))
    if kind not in ("longrope", "su"):
        raise ExportError(f"rope type {kind!r}: the engines' LongRoPE class is built for 'longrope' only")
    max_position = config["max_position_embeddings"]
    top = config.get("original_max_position_embeddings")
    if engine == "vllm":
        original = top if top is not None else params["original_max_position_embeddings"]
    elif engine == "sglang":
        original = params.get("original_max_position_embeddings", max_position)
    else:
        if top is None:
            raise ExportError("TGI reads config.original_max_position_embeddings (top level) for longrope: "
                              "AttributeError without it")
        original = top
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rotary_dim = int(head_dim * params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    base = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if engine == "tgi" and ("short_mscale" in params or "long_mscale" in params):
        raise ExportError("TGI takes short_mscale/long_mscale as factors on the frequencies (the angles), "
                          "not on cos/sin")
    if engine == "tgi":
        mscale = 1.0 if max_position <= original else math.sqrt(
            1 + math.log(max_position / original) / math.log(original))
    else:
        scale = max_position / original
        mscale = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))
    short_mscale = params.get("short_mscale", mscale)
    long_mscale = params.get("long_mscale", mscale)
    if short_mscale != long_mscale:
        raise ExportError(f"short_mscale {short_mscale} != long_mscale {long_mscale}")

    def table(factors):
        if len(factors) != rotary_dim // 2:
            raise ExportError(f"{len(factors)} factors for {rotary_dim // 2} rotary pairs")
        ext = torch.tensor(factors, dtype=torch.float32)
        return 1.0 / (ext * base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))

    return {"inv_freq_short": table(params["short_factor"]), "inv_freq_long": table(params["long_factor"]),
            "mscale": float(short_mscale), "original": int(original), "max_position": int(max_position)}


