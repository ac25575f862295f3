"""GGUF -> Hugging Face checkpoint: dequantised weights, config, tokenizer and chat template.

vLLM's CPU backend wants a Hugging Face checkpoint folder, and transformers can read a GGUF but
not write one back as safetensors, so this module does the conversion itself:

- every tensor is dequantised to float32 with the ``gguf`` package (float32 is exact for every
  GGUF block format; vLLM casts to bf16 at load time where that is the faster dtype) and renamed
  from llama.cpp names to the transformers names of the architecture;
- ``llama`` only: llama.cpp's converter permutes the rows of Q and K for its interleaved RoPE
  layout, which is undone here. Its ``qwen2`` converter does not permute, and qwen2 keeps the
  q/k/v biases;
- ``lm_head`` is written when the GGUF has its own ``output`` tensor (Qwen2.5), else the
  embeddings are tied (SmolLM2);
- ``config.json`` and ``generation_config.json`` are built from the GGUF metadata, the tokenizer
  (and the chat template inside the GGUF) is rebuilt by transformers' GGUF tokenizer loader.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mrsa.engine.provision.catalog import Arch

log = logging.getLogger(__name__)

WEIGHTS_FILENAME = "model.safetensors"
TORCH_DTYPE = "float32"

# llama.cpp tensor name (without .weight/.bias) -> transformers name; the same for llama and qwen2.
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BIASED = {"llama": (), "qwen2": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _field_value(reader: Any, key: str, default: Any = None) -> Any:
    """A scalar/string/array GGUF metadata value, or ``default`` when absent."""
    field = reader.get_field(key)
    if field is None:
        return default
    value = field.contents()
    if isinstance(value, float):
        # GGUF stores float32; print-round-trip gives 1e-05, not 9.99999974e-06.
        value = float(str(np.float32(value)))
    return value


def build_config(reader: Any, arch: Arch) -> dict[str, Any]:
    """The transformers ``config.json`` of ``arch`` from the GGUF metadata."""
    found = _field_value(reader, "general.architecture")
    if found != arch:
        raise ValueError(f"expected a {arch} GGUF, got architecture {found!r}")

    def meta(key: str, default: Any = None) -> Any:
        value = _field_value(reader, f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(meta("embedding_length"))
    heads = int(meta("attention.head_count"))
    vocab = _field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.get_field("tokenizer.ggml.tokens").data)
    tensor_names = {t.name for t in reader.tensors}
    eos = int(_field_value(reader, "tokenizer.ggml.eos_token_id"))
    config: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "vocab_size": int(vocab),
        "bos_token_id": int(_field_value(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": eos,
        "pad_token_id": int(_field_value(reader, "tokenizer.ggml.padding_token_id", eos)),
        "torch_dtype": TORCH_DTYPE,
        # As transformers writes it: without it, transformers 5 takes any local tokenizer for
        # an old Mistral one and warns about a regex it never checks.
        "transformers_version": _transformers_version(),
        "use_cache": True,
    }
    if arch == "llama":
        config.update(
            head_dim=int(meta("rope.dimension_count", hidden // heads)),
            attention_bias=False,
            mlp_bias=False,
        )
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=config["num_hidden_layers"])
    return config


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def build_generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """``generation_config.json``: only the special token ids, no sampling defaults (vLLM would
    otherwise apply them to every request that leaves a field unset)."""
    return {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name (``blk.3.attn_q.weight``) to its transformers name."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        raise KeyError(f"unexpected GGUF tensor name {gguf_name!r}")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_TENSORS:
        return f"model.layers.{int(parts[1])}.{_BLOCK_TENSORS[parts[2]]}.{suffix}"
    raise KeyError(f"unexpected GGUF tensor name {gguf_name!r}")


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation for llama (HF rotate-half -> GGML interleaved RoPE).

    llama.cpp's converter reorders each head's rows from ``[x0..x(d/2-1), y0..y(d/2-1)]``
    to ``[x0, y0, x1, y1, ...]`` via ``reshape(h, 2, d/2, ...).swapaxes(1, 2)``; the
    inverse is ``reshape(h, d/2, 2, ...).swapaxes(1, 2)``. ``n_heads`` is the number of
    heads the matrix holds (the KV head count for K).
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def convert_tensors(reader: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Dequantise every GGUF tensor to float32 torch tensors keyed by transformers names."""
    import torch
    from gguf.quants import dequantize

    permute = config["model_type"] == "llama"
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        # GGUF lists shapes innermost-first; dequantize already returns numpy (out, in) order.
        expected = tuple(int(d) for d in reversed(tensor.shape))
        if weight.shape != expected:
            weight = weight.reshape(expected)
        if permute and name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_attention_heads"])
        elif permute and name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_key_value_heads"])
        tensors[name] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32).copy())
    check_tensor_set(tensors, config)
    return tensors


def check_tensor_set(tensors: dict[str, Any], config: dict[str, Any]) -> None:
    """Fail loudly unless the converted weights are exactly a full model of the architecture."""
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        expected.add("lm_head.weight")
    biased = _BIASED[config["model_type"]]
    for layer in range(config["num_hidden_layers"]):
        expected.update(f"model.layers.{layer}.{hf}.weight" for hf in _BLOCK_TENSORS.values())
        expected.update(f"model.layers.{layer}.{hf}.bias" for hf in biased)
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise ValueError(f"GGUF tensors do not form a {config['model_type']} model: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")


def save_tokenizer(gguf_path: Path, out_dir: Path, model_max_length: int) -> None:
    """Rebuild the tokenizer (and chat template) from the GGUF and save it to ``out_dir``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path.name} carries no tokenizer.chat_template")
    tokenizer.model_max_length = model_max_length
    # save_jinja_files=False keeps the template inside tokenizer_config.json.
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)


def check_chat_template(folder: Path) -> str:
    """Load the saved tokenizer and render a chat with it; return the rendered prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "user", "content": "ping"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str) or "ping" not in prompt:
        raise ValueError(f"chat template in {folder} did not render a chat: {prompt!r}")
    return prompt


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def convert_gguf(gguf_path: Path, out_dir: Path, arch: Arch) -> None:
    """Write a complete transformers checkpoint of the ``arch`` GGUF at ``gguf_path`` into ``out_dir``."""
    import gguf
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(gguf_path))
    config = build_config(reader, arch)
    log.info("dequantising %d tensors from %s", len(reader.tensors), gguf_path.name)
    tensors = convert_tensors(reader, config)
    save_file(tensors, str(out_dir / WEIGHTS_FILENAME), metadata={"format": "pt"})
    del tensors
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", build_generation_config(config))
    log.info("rebuilding tokenizer and chat template from %s", gguf_path.name)
    save_tokenizer(gguf_path, out_dir, config["max_position_embeddings"])
    check_chat_template(out_dir)
    for path in out_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600; the cache may be shared
