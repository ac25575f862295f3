"""ZAYA's attention layer for vLLM: CCA q/k/v, then ordinary causal GQA attention over the
compressed K/V in vLLM's paged cache.

Per token: one merged GEMM gives ``q_pre, k_pre, v_cur, v_del`` (transformers' four
projections, stacked at load time); :class:`engine.zaya.state.CCAState` turns them into q/k/v
(convs, q-k mean skip path, L2 norm, key temperature, partial RoPE, value shift) reading and
updating the request's state slot; vLLM's :class:`Attention` stores k/v (``2 * Hk * d`` values
per token) and attends; ``o_proj`` maps back to the hidden size.

Parameter names below are transformers' (``self_attn.qkv_proj.conv_qk_depthwise.weight``,
``self_attn.qk_norm.temp``, ...) except the merged projection, filled by
:meth:`ZayaCCAProjection.load_split`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention

from mrsa.engine.zaya.state import CCAState
from mrsa.kernels.cca.reference import CCAParams

SPLITS = ("q_proj", "k_proj", "v_proj_current", "v_proj_delayed")


class ZayaCCAProjection(nn.Module):
    def __init__(self, cfg: object) -> None:
        super().__init__()
        e, d = cfg.hidden_size, cfg.head_dim  # type: ignore[attr-defined]
        hq, hk = cfg.num_attention_heads, cfg.num_key_value_heads  # type: ignore[attr-defined]
        self.sizes = (hq * d, hk * d, hk * d // 2, hk * d // 2)
        self.in_proj = nn.Parameter(torch.empty(sum(self.sizes), e))
        c = (hq + hk) * d
        t0, t1 = cfg.cca_time0, cfg.cca_time1  # type: ignore[attr-defined]
        self.conv_qk_depthwise = nn.Module()
        self.conv_qk_depthwise.weight = nn.Parameter(torch.empty(c, 1, t0))
        self.conv_qk_depthwise.bias = nn.Parameter(torch.zeros(c))
        self.conv_qk_grouped = nn.Module()
        self.conv_qk_grouped.weight = nn.Parameter(torch.empty(c, d, t1))
        self.conv_qk_grouped.bias = nn.Parameter(torch.zeros(c))

    def load_split(self, which: str, weight: Tensor) -> None:
        """Copy one of transformers' four projection weights into its rows of ``in_proj``."""
        i = SPLITS.index(which)
        start = sum(self.sizes[:i])
        rows = self.in_proj.data[start : start + self.sizes[i]]
        if rows.shape != weight.shape:
            raise ValueError(f"{which}: checkpoint shape {tuple(weight.shape)} != {tuple(rows.shape)}")
        rows.copy_(weight)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(F.linear(x, self.in_proj).split(self.sizes, dim=-1))


class ZayaQKNorm(nn.Module):
    def __init__(self, cfg: object) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.zeros(cfg.num_key_value_heads))  # type: ignore[attr-defined]


class ZayaAttention(nn.Module):
    def __init__(
        self, cfg: object, layer_idx: int, vllm_config: VllmConfig, cos_sin: Tensor, prefix: str
    ) -> None:
        super().__init__()
        if getattr(cfg, "attention_bias", False):
            raise NotImplementedError("ZAYA with attention_bias=True (initial value state = v bias)")
        d, hq, hk = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads  # type: ignore[attr-defined]
        self.qkv_proj = ZayaCCAProjection(cfg)
        self.qk_norm = ZayaQKNorm(cfg)
        self.o_proj = nn.Linear(hq * d, cfg.hidden_size, bias=False)  # type: ignore[attr-defined]
        # Shared fp32 [max_len, rotary_dim] cos|sin table (one per layer type), not a parameter.
        self._cos_sin = [cos_sin]
        self.cca = CCAState(cfg, vllm_config, prefix=f"{prefix}.cca")
        layer_type = cfg.layer_types[layer_idx]  # type: ignore[attr-defined]
        window = cfg.sliding_window if layer_type == "hybrid_sliding" else None  # type: ignore[attr-defined]
        self.attn = Attention(
            hq,
            d,
            d**-0.5,
            num_kv_heads=hk,
            cache_config=vllm_config.cache_config,
            per_layer_sliding_window=window,
            prefix=f"{prefix}.attn",
        )

    def params(self, device: torch.device) -> CCAParams:
        cs = self._cos_sin[0]
        if cs.device != device:
            cs = self._cos_sin[0] = cs.to(device)
        p = self.qkv_proj
        return CCAParams(
            conv_dw_weight=p.conv_qk_depthwise.weight,
            conv_dw_bias=p.conv_qk_depthwise.bias,
            conv_g_weight=p.conv_qk_grouped.weight,
            conv_g_bias=p.conv_qk_grouped.bias,
            key_temp=self.qk_norm.temp,
            cos_sin_cache=cs,
        )

    def forward(self, positions: Tensor, x: Tensor) -> Tensor:
        q_pre, k_pre, v_cur, v_del = self.qkv_proj(x)
        q, k, v = self.cca(q_pre, k_pre, v_cur, v_del, positions, self.params(x.device))
        return self.o_proj(self.attn(q, k, v))
