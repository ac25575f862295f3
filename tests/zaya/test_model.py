"""The vLLM ZAYA model (engine/zaya) against transformers' ZayaForCausalLM on the same tiny
random checkpoint: logits at every prompt position, greedy decoding with concurrent requests
and chunked prefill, and the KV-cache layout the engine allocated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

GREEDY_TOKENS = 32


@pytest.fixture(scope="module")
def hf_model(tiny_zaya: Path) -> Any:
    """transformers' model on the checkpoint's weights. Its from_pretrained resets each router's
    skip-expert balancing bias to -1 after loading (``ZayaPreTrainedModel._init_weights`` assigns
    it directly), so the checkpoint's buffers are put back: both models then run the same
    weights, the vLLM model having loaded them as stored."""
    from safetensors.torch import load_file
    from transformers import ZayaForCausalLM

    model = ZayaForCausalLM.from_pretrained(tiny_zaya, dtype=torch.float32).eval()
    stored = load_file(tiny_zaya / "model.safetensors")
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("balancing_biases"):
                buf.copy_(stored[name])
    return model


@torch.no_grad()
def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0]


def test_prefill_logits_match_transformers(hf_model: Any, vllm_results: dict[str, Any]) -> None:
    prompts, logits = vllm_results["logit_prompts"], vllm_results["logits"]
    assert len(prompts) == len(logits) >= 4
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths
    worst = 0.0
    for ids, rows in zip(prompts, logits):
        ours = torch.tensor(rows, dtype=torch.float32)
        theirs = hf_logits(hf_model, ids)
        assert ours.shape == theirs.shape, (len(ids), ours.shape, theirs.shape)
        assert torch.isfinite(ours).all()
        diff = (ours - theirs).abs().max().item()
        worst = max(worst, diff)
        assert diff < 1e-3, (len(ids), diff)
        # Not vacuous: the logits spread over several units.
        assert theirs.std().item() > 0.5
    print(f"max |logit diff| = {worst:.2e}")


def test_greedy_decode_matches_transformers(hf_model: Any, vllm_results: dict[str, Any]) -> None:
    prompts, greedy = vllm_results["greedy_prompts"], vllm_results["greedy"]
    assert len(prompts) >= 4  # decoded concurrently, the longer ones prefilled in chunks
    assert max(len(p) for p in prompts) > 2 * 32  # > two scheduler steps (max_num_batched_tokens)
    for ids, ours in zip(prompts, greedy):
        seq = list(ids)
        for _ in range(GREEDY_TOKENS):
            seq.append(int(hf_logits(hf_model, seq)[-1].argmax()))
        theirs = seq[len(ids) :]
        assert ours == theirs, (len(ids), ours, theirs)
        assert len(set(theirs)) > 3  # a non-degenerate continuation


def test_engine_ran_the_requested_cca_ops(vllm_results: dict[str, Any]) -> None:
    """The comparisons above hold for the path asked for: the Triton kernels really ran inside
    the engine (NaN-poisoned outputs, so every element they return was written)."""
    expected = {
        "reference": ["mrsa.kernels.cca.reference", "mrsa.kernels.cca.reference"],
        "triton": ["mrsa.kernels.cca.prefill", "mrsa.kernels.cca.decode"],
    }[vllm_results["ops"]]
    assert vllm_results["cca_ops"]["modules"] == expected
    # Every layer of every forward step (profiling, prefill chunks, 32+ decode steps) asks.
    assert vllm_results["cca_ops"]["calls"] > 4 * 32


def test_kv_cache_holds_compressed_kv_and_cca_states(vllm_results: dict[str, Any]) -> None:
    from transformers import AutoConfig

    groups = {g["type"]: g for g in vllm_results["kv_groups"]}
    assert set(groups) == {"FullAttentionSpec", "MambaSpec"}
    attn, state = groups["FullAttentionSpec"], groups["MambaSpec"]
    hk, d, fp32 = 2, 32, 4
    assert (attn["num_kv_heads"], attn["head_size"]) == (hk, d)
    # K and V after CCA: 2 * Hk * d values per token, nothing else in the paged cache.
    assert attn["page_size_bytes"] == attn["block_size"] * 2 * hk * d * fp32
    # Per request: conv state [S, (Hq + Hk) * d] and delayed-value state [Hk * d / 2].
    assert [tuple(s) for s in state["shapes"]] == [(2, (8 + hk) * d), (hk * d // 2,)]
    layers = range(4)
    assert attn["layer_names"] == [f"model.layers.{i}.self_attn.attn" for i in layers]
    assert state["layer_names"] == [f"model.layers.{i}.self_attn.cca" for i in layers]
    assert AutoConfig  # (imported to fail here, not in a fixture, if transformers lacks ZAYA)


def test_zaya1_8b_kv_cache_is_an_eighth_of_mha() -> None:
    """The same spec arithmetic for the ZAYA1-8B config (transformers' defaults are that model)."""
    from transformers import ZayaConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from mrsa.engine.zaya.state import state_shapes

    cfg = ZayaConfig()
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (2048, 2, 128)
    ours = FullAttentionSpec(block_size=16, num_kv_heads=cfg.num_key_value_heads, head_size=cfg.head_dim, dtype=torch.bfloat16)
    mha = FullAttentionSpec(block_size=16, num_kv_heads=cfg.hidden_size // cfg.head_dim, head_size=cfg.head_dim, dtype=torch.bfloat16)
    assert ours.page_size_bytes // 16 // 2 == 2 * 2 * 128  # 512 values per token and layer
    assert mha.page_size_bytes == 8 * ours.page_size_bytes
    assert state_shapes(cfg) == ((2, 1280), (128,))


def test_tiny_checkpoint_routes_to_every_expert_and_the_skip_expert(hf_model: Any, vllm_results: dict[str, Any]) -> None:
    """The comparisons above cover the skip expert (output 0) and the experts, not just a few."""
    chosen: set[int] = set()
    skipped = 0

    def hook(mod: Any, args: Any, out: Any) -> None:
        nonlocal skipped
        chosen.update(out[2].flatten().tolist())
        skipped += int((out[1] == 0).sum())

    handles = [layer.mlp.gate.register_forward_hook(hook) for layer in hf_model.model.layers]
    try:
        for ids in vllm_results["logit_prompts"]:
            hf_logits(hf_model, ids)
    finally:
        for h in handles:
            h.remove()
    assert chosen == set(range(hf_model.config.num_experts))
    assert skipped > 0
