"""Test-only bridge to transformers' ZAYA attention: run the real module and capture the q/k/v it
hands to its attention function (after CCA, q/k norm, key temperature and RoPE).

Capture works by registering an attention implementation in transformers' global
``ALL_ATTENTION_FUNCTIONS`` under a private name and pointing a tiny ZayaConfig at it, so nothing in
transformers is patched and the module's own forward (including its hybrid cache) does all the math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import ZayaConfig
from transformers.cache_utils import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.zaya.modeling_zaya import ZayaAttention, ZayaRotaryEmbedding

_IMPL = "_cca_test_capture"


@dataclass
class Capture:
    """q/k/v of the latest call, ``[T_new, H, d]`` each (the cache's history is cut off)."""

    calls: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)


_CAPTURE = Capture()


def _capture_attention(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
) -> tuple[Tensor, None]:
    """[B, H, T, d] in; records the new tokens' q/k/v; plain causal GQA softmax attention out."""
    t_new = query.shape[2]
    _CAPTURE.calls.append(
        (
            query[0].transpose(0, 1).clone(),
            key[0, :, -t_new:].transpose(0, 1).clone(),
            value[0, :, -t_new:].transpose(0, 1).clone(),
        )
    )
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    t_all = k.shape[2]
    # Causal with the new tokens at the end of the cached sequence.
    mask = torch.ones(t_new, t_all, dtype=torch.bool, device=query.device).tril(t_all - t_new)
    out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=kwargs.get("scaling"))
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS[_IMPL] = _capture_attention


def tiny_config(hq: int = 4, hk: int = 2, d: int = 16, hidden: int = 48, theta: float = 5e6) -> ZayaConfig:
    cfg = ZayaConfig(
        vocab_size=32,
        eos_token_id=1,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=hq,
        num_key_value_heads=hk,
        head_dim=d,
        moe_intermediate_size=16,
        num_experts=2,
        router_hidden_size=8,
        max_position_embeddings=256,
        rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5}},
    )
    cfg._attn_implementation = _IMPL
    return cfg


class HFZaya:
    """A randomly initialised ZayaAttention (every parameter drawn, including the conv biases and
    the key temperature, which transformers initialises to zero) plus its rotary embedding."""

    def __init__(self, cfg: ZayaConfig, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> None:
        self.cfg = cfg
        self.attn = ZayaAttention(cfg, layer_idx=0).eval()
        with torch.no_grad():
            for name, prm in self.attn.named_parameters():
                std = 1.0 if name.endswith("temp") else 1.0 / math.sqrt(max(prm.shape[-1], 1))
                if "conv" in name:
                    std = 0.5
                prm.copy_(torch.randn(prm.shape, generator=gen) * std)
        self.attn.to(dtype)
        self.rotary = ZayaRotaryEmbedding(cfg)
        self.dtype = dtype

    @property
    def rotary_dim(self) -> int:
        return int(self.cfg.head_dim * self.cfg.rope_parameters["hybrid"]["partial_rotary_factor"])

    @property
    def theta(self) -> float:
        return float(self.cfg.rope_parameters["hybrid"]["rope_theta"])

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.cfg)

    @torch.no_grad()
    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q_pre, k_pre, v_cur, v_del for ``x [T, E]`` (what a vLLM layer's projection produces)."""
        p = self.attn.qkv_proj
        return p.q_proj(x), p.k_proj(x), p.v_proj_current(x), p.v_proj_delayed(x)

    @torch.no_grad()
    def forward(
        self, x: Tensor, positions: Tensor, cache: DynamicCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run one sequence chunk ``x [T, E]`` at ``positions [T]``; returns (q, k, v, out) with
        q/k/v as the module handed them to attention (``[T, H, d]``) and out ``[T, E]``."""
        _CAPTURE.calls.clear()
        cos, sin = self.rotary(x[None], positions[None], "hybrid")
        out, _ = self.attn(x[None], attention_mask=None, past_key_values=cache, position_embeddings=(cos, sin))
        assert len(_CAPTURE.calls) == 1
        q, k, v = _CAPTURE.calls[0]
        return q, k, v, out[0]

    def cache_states(self, cache: DynamicCache) -> tuple[Tensor, Tensor]:
        """transformers' conv state ``[C, S]`` and recurrent value state ``[Hk*d/2]`` for batch row 0."""
        layer = cache.layers[0]
        return layer.conv_states[0][0], layer.recurrent_states[0][0]
