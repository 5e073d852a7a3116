"""The original deepseek-ai DeepSeek-OCR-2 `config.json`, read as transformers' native `DeepseekOcr2Config`.

The deepseek-ai repository (the one vLLM serves) and transformers' native classes share the weights:
transformers maps the original weight names to its own at load time. Only `config.json` differs: the
original has `language_config` / `projector_config` / `vision_config` (model_type `deepseek_vl_v2`, which
transformers does not know), the native one `text_config` / `vision_config` (model_type `deepseek_ocr2`).

In: a checkpoint directory. Out: a `DeepseekOcr2Config` built in memory when its config.json is the
original format, None when it is already transformers' own (let `from_pretrained` read it). Raises
ValueError naming the field when the original config describes something the native classes cannot
be (multi-head latent attention, a projector other than linear, DeepSeek-OCR v1).
"""

from __future__ import annotations

import json
from pathlib import Path

V2_ARCHITECTURE = "DeepseekOCR2ForCausalLM"
IMAGE_TOKEN = "<image>"
# The vision side is fixed by the architecture (vLLM hard-codes it too): SAM ViT-B, then a 24-layer
# Qwen2-0.5B-shaped encoder with learned queries. The original config.json does not describe it in a
# form the native config takes, so these are the real model's values.
ENCODER_CONFIG = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
SAM_CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "global_attn_indexes": [2, 5, 8, 11], "downsample_channels": [512, 896]}


def native_config(model_path):
    """The native config for an original-format DeepSeek-OCR-2 checkpoint at `model_path`, else None."""
    path = Path(model_path)
    original = json.loads((path / "config.json").read_text())
    if "language_config" not in original:
        return None
    architectures = original.get("architectures") or []
    if V2_ARCHITECTURE not in architectures:
        raise ValueError(f"config.json architectures {architectures}: transformers has native classes for "
                         f"{V2_ARCHITECTURE} (DeepSeek-OCR-2) only")
    from transformers import DeepseekOcr2Config

    language = original["language_config"]
    projector = original.get("projector_config") or {}
    if language.get("kv_lora_rank") or language.get("qk_rope_head_dim"):
        raise ValueError("language_config.kv_lora_rank: multi-head latent attention is not DeepSeek-OCR-2's decoder")
    if projector.get("projector_type", "linear") != "linear":
        raise ValueError(f"projector_config.projector_type {projector['projector_type']!r}: expected linear")
    if projector.get("input_dim", ENCODER_CONFIG["hidden_size"]) != ENCODER_CONFIG["hidden_size"]:
        raise ValueError(f"projector_config.input_dim {projector['input_dim']}: the vision encoder is "
                         f"{ENCODER_CONFIG['hidden_size']} wide")
    if language.get("norm_topk_prob"):
        raise ValueError("language_config.norm_topk_prob: the native MoE does not renormalise top-k weights")

    layers = language["num_hidden_layers"]
    dense_first = language.get("first_k_dense_replace", 0)
    every = language.get("moe_layer_freq", 1)
    sparse = language.get("n_routed_experts") is not None
    mlp_layer_types = ["sparse" if sparse and i >= dense_first and i % every == 0 else "dense" for i in range(layers)]
    text = {
        "vocab_size": language["vocab_size"], "hidden_size": language["hidden_size"],
        "intermediate_size": language["intermediate_size"], "num_hidden_layers": layers,
        "num_attention_heads": language["num_attention_heads"],
        "num_key_value_heads": language.get("num_key_value_heads", language["num_attention_heads"]),
        "max_position_embeddings": language.get("max_position_embeddings", 8192),
        "rms_norm_eps": language.get("rms_norm_eps", 1e-6),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(language.get("rope_theta", 10000.0))},
        "mlp_layer_types": mlp_layer_types, "bos_token_id": language.get("bos_token_id"),
        "eos_token_id": language.get("eos_token_id"), "tie_word_embeddings": False,
    }
    if sparse:
        text.update({
            "n_routed_experts": language["n_routed_experts"], "n_shared_experts": language.get("n_shared_experts"),
            "num_experts_per_tok": language["num_experts_per_tok"],
            "moe_intermediate_size": language["moe_intermediate_size"],
            "routed_scaling_factor": language.get("routed_scaling_factor", 1.0),
            "topk_method": language.get("topk_method", "greedy"),
        })
    return DeepseekOcr2Config(
        image_token_id=_image_token_id(path),
        text_config=text,
        vision_config={"sam_config": dict(SAM_CONFIG), "encoder_config": dict(ENCODER_CONFIG)},
        tie_word_embeddings=False,
    )


def _image_token_id(path: Path) -> int:
    """`<image>`'s id, from tokenizer.json's added tokens (the original config does not record it)."""
    tokenizer_file = path / "tokenizer.json"
    if tokenizer_file.exists():
        for token in json.loads(tokenizer_file.read_text()).get("added_tokens", []):
            if token.get("content") == IMAGE_TOKEN:
                return int(token["id"])
    from transformers import AutoTokenizer

    image_id = AutoTokenizer.from_pretrained(path, local_files_only=True).convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None:
        raise ValueError(f"the tokenizer at {path} has no {IMAGE_TOKEN} token")
    return int(image_id)
