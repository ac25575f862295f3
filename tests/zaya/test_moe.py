"""ZAYA's MoE block on vLLM's FusedMoE (engine/zaya/moe.py) against a plain PyTorch statement of
ZAYA's expert math, on random weights: every expert and the skip expert hit, skip tokens exactly
zero, the checkpoint's 3-D expert tensors loaded through FusedMoE's weight loader (also as one
rank of an expert-parallel group, holding only its experts).

The layers are built as vLLM builds a model's layers: under the current vLLM config, with
(single-rank, gloo) parallel groups, and run inside a forward context."""

from __future__ import annotations

import socket
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

E, H, I, R = 4, 256, 128, 64  # experts, hidden, expert intermediate, router hidden
TOKENS = 96


def zaya_cfg() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        num_experts=E, hidden_size=H, moe_intermediate_size=I, router_hidden_size=R, rms_norm_eps=1e-5
    )


def reference_experts(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """transformers' ZayaExperts, token by token: ``down(silu(gate) * up) * weight`` with
    ``gate_up_proj [E, 2I, H]`` (gate rows first), ``down_proj [E, H, I]``; expert E (skip) -> 0."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        e = int(idx[t])
        if e < E:
            gate, up = F.linear(x[t], gate_up[e]).chunk(2, dim=-1)
            out[t] = F.linear(F.silu(gate) * up, down[e]) * weight[t]
    return out


@pytest.fixture(scope="module")
def vllm_cfg() -> Iterator[Any]:
    """What vLLM sets up before building a model: the current config, one-rank parallel groups."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = VllmConfig()
    with set_current_vllm_config(cfg):
        init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, backend="gloo")
        initialize_model_parallel(1, 1)
        try:
            yield cfg
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()


def build_block(layer: int, gen: torch.Generator) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A FusedMoE-backed block with random router and expert weights, loaded from checkpoint-
    shaped tensors the way the model loads them; returns (block, gate_up_proj, down_proj)."""
    from mrsa.engine.zaya.moe import ZayaSparseMoeBlock

    block = ZayaSparseMoeBlock(zaya_cfg(), layer, prefix=f"model.layers.{layer}.mlp")
    with torch.no_grad():
        for name, p in block.gate.named_parameters():
            base = 1.0 if name.endswith(("norm.weight", "states_scale")) else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
    gate_up = 0.2 * torch.randn(E, 2 * I, H, generator=gen)
    down = 0.2 * torch.randn(E, H, I, generator=gen)
    assert block.load_checkpoint_experts("gate_up_proj", gate_up) == "experts.routed_experts.w13_weight"
    assert block.load_checkpoint_experts("down_proj", down) == "experts.routed_experts.w2_weight"
    moe = block.experts.routed_experts
    moe.quant_method.process_weights_after_loading(moe)  # as vLLM's loader does after load_weights
    return block, gate_up, down


def test_fused_experts_match_reference_with_skip_tokens(vllm_cfg: Any) -> None:
    from vllm.forward_context import set_forward_context

    from mrsa.engine.zaya.moe import encode_route

    gen = torch.Generator().manual_seed(0)
    block, gate_up, down = build_block(0, gen)
    x = torch.randn(TOKENS, H, generator=gen)
    idx = torch.arange(TOKENS) % (E + 1)  # every expert and the skip expert, interleaved
    idx = idx[torch.randperm(TOKENS, generator=gen)]
    weight = 0.1 + 0.9 * torch.rand(TOKENS, generator=gen)
    want = reference_experts(x, idx, weight, gate_up, down)
    with torch.no_grad(), set_forward_context(None, vllm_cfg):
        got = block.experts(x.clone(), encode_route(idx, weight, E))
    skip = idx == E
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert torch.all(got[skip] == 0)  # the skip expert contributes exactly nothing
    # Not vacuous: had the skip tokens gone through expert 0 at their weight, they would not be 0.
    assert reference_experts(x[skip], torch.zeros_like(idx[skip]), weight[skip], gate_up, down).abs().max() > 0.1
    assert want[~skip].abs().amax(dim=-1).min() > 0.1  # every routed token has a real output
    assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item()


def test_block_routes_with_zaya_router_and_previous_state(vllm_cfg: Any) -> None:
    """The whole block: ZayaRouter's (expert, weight) drive FusedMoE; every class gets tokens."""
    from vllm.forward_context import set_forward_context

    gen = torch.Generator().manual_seed(1)
    block, gate_up, down = build_block(1, gen)
    x = torch.randn(TOKENS, H, generator=gen)
    prev = torch.randn(TOKENS, R, generator=gen)
    with torch.no_grad():
        # Balancing biases that spread these tokens over all classes (what the training-time
        # controller does), the skip expert included.
        gate = block.gate
        probs = torch.softmax(gate.router_mlp(gate.down_proj(x) + prev * gate.router_states_scale), dim=-1)
        gate.balancing_biases.copy_(-probs.mean(dim=0))
        idx, weight, state = gate(x, prev)
        want = reference_experts(x, idx, weight, gate_up, down)
        with set_forward_context(None, vllm_cfg):
            got, got_state = block(x.clone(), prev)
    assert set(idx.tolist()) == set(range(E + 1))
    assert torch.equal(got_state, state)
    assert torch.all(got[idx == E] == 0)
    assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item()


def test_checkpoint_experts_load_only_this_ranks_experts_under_ep(vllm_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of a 2-rank data-parallel group with expert parallelism holds experts 2 and 3: the
    per-expert weight loader must place exactly those, from the full 3-D checkpoint tensors."""
    import vllm.model_executor.layers.fused_moe.config as moe_config
    import vllm.model_executor.layers.fused_moe.layer as moe_layer
    from vllm.config import VllmConfig, set_current_vllm_config

    from mrsa.engine.zaya.moe import ZayaSparseMoeBlock

    dp_group = types.SimpleNamespace(world_size=2, rank_in_group=1)
    monkeypatch.setattr(moe_layer, "get_dp_group", lambda: dp_group)
    monkeypatch.setattr(moe_config, "get_dp_group", lambda: dp_group)
    ep_cfg = VllmConfig()
    ep_cfg.parallel_config.enable_expert_parallel = True
    with set_current_vllm_config(ep_cfg):
        block = ZayaSparseMoeBlock(zaya_cfg(), 2, prefix="model.layers.2.mlp")
    moe = block.experts.routed_experts
    assert moe.moe_config.moe_parallel_config.use_ep and moe.local_num_experts == 2
    gen = torch.Generator().manual_seed(2)
    gate_up, down = torch.randn(E, 2 * I, H, generator=gen), torch.randn(E, H, I, generator=gen)
    block.load_checkpoint_experts("gate_up_proj", gate_up)
    block.load_checkpoint_experts("down_proj", down)
    assert torch.equal(moe.w13_weight, gate_up[2:]) and torch.equal(moe.w2_weight, down[2:])
    with pytest.raises(ValueError, match="checkpoint shape"):
        block.load_checkpoint_experts("down_proj", down.transpose(1, 2))
