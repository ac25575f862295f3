"""ZAYA's MoE block: the MLP router that also reads the previous layer's router state, top-1
choice over ``num_experts`` SwiGLU experts plus one "skip" expert (output zero), and the experts.

Op order and dtypes follow transformers' ``ZayaRouter`` / ``ZayaExperts`` so fp32 results agree
to rounding: softmax in the activation dtype, choice on ``probs.float() + balancing_biases``,
weight = the unbiased prob, expert output ``down(silu(gate) * up) * weight``.

The experts run grouped by expert (one GEMM pair per expert hit), in plain PyTorch; the weights
keep the checkpoint's 3-D layout ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.zaya.norm import ZayaRMSNorm


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


class ZayaExperts(nn.Module):
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


class ZayaSparseMoeBlock(nn.Module):
    def __init__(self, cfg: object, layer_idx: int) -> None:
        super().__init__()
        if getattr(cfg, "num_experts_per_tok", 1) != 1:
            raise ValueError("ZAYA supports num_experts_per_tok=1 only")
        self.gate = ZayaRouter(cfg, layer_idx)
        self.experts = ZayaExperts(cfg)

    def forward(self, x: Tensor, prev_state: Tensor | None) -> tuple[Tensor, Tensor]:
        idx, weight, state = self.gate(x, prev_state)
        return self.experts(x, idx, weight), state
