"""Plain PyTorch reference for ZAYA1's Compressed Convolutional Attention (CCA) q/k/v path.

This is the oracle the Triton kernels in ``prefill.py`` / ``decode.py`` are tested against, and it is
itself anchored to transformers' ``ZayaCCAProjection`` + ``ZayaQKNorm`` + RoPE (see
``tests/kernels/test_cca.py``). It follows transformers' order of operations and dtypes exactly
(convs run in the input dtype, cos/sin are cast to the input dtype, the L2 norm clamps at
``finfo(dtype).eps``), so in fp32 it reproduces transformers to rounding and in bf16 it carries the
same bf16 rounding the model was evaluated with.

What a vLLM-style layer has at this point, and therefore what these functions take:

* ``q_pre [T, Hq*d]``, ``k_pre [T, Hk*d]``: outputs of ``q_proj`` / ``k_proj`` (any row stride, unit
  column stride, so they may be column slices of one merged projection output);
* ``v_cur [T, Hk*d/2]``, ``v_del [T, Hk*d/2]``: outputs of ``v_proj_current`` / ``v_proj_delayed``
  applied to the SAME token's hidden state (the one-token shift of the delayed half is done here);
* packed variable-length sequences (``cu_seqlens``), per-token ``positions`` for RoPE;
* the small per-sequence states vLLM keeps in its Mamba-style state cache:
  ``conv_state [*, S, C]`` with ``S = (t0-1)+(t1-1)`` (2 for ZAYA1) and ``C = (Hq+Hk)*d``, the raw
  (pre-conv) ``[q_pre; k_pre]`` rows of the last ``S`` tokens, oldest first (time-major, so each row
  is one token and kernels load it contiguously; transformers keeps the transpose ``[B, C, S]``);
  ``v_state [*, Hk*d/2]``, ``v_del`` of the previous token.

A fresh sequence starts from zero states. That equals transformers' zero left-padding for the conv
state; for the value state transformers uses ``v_proj_delayed(0)``, which is zero because ZAYA has
no projection biases (``attention_bias=False``) - with biases, pass that bias as the initial state.

Value-head layout (from transformers, NOT "half of every head"): ``v = cat([v_cur, v_delayed], -1)
.view(T, Hk, d)``, so with ZAYA1's Hk = 2 value head 0 is entirely the current token and head 1
entirely the previous token; only with odd Hk does a head straddle both halves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class CCAParams:
    """The learned CCA tensors that follow the projections (one layer).

    ``conv_dw_weight [C, 1, t0]``: depthwise conv (``conv_qk_depthwise``), one filter per channel.
    ``conv_g_weight [C, d, t1]``: grouped conv (``conv_qk_grouped``), one group per head (Hq + Hk).
    Biases ``[C]`` (nn.Conv1d's default bias=True, so ZAYA1 has them); None means no bias.
    ``key_temp [Hk]``: ZayaQKNorm.temp, a plain multiplier of the normalised keys.
    ``cos_sin_cache [max_pos, rotary_dim]`` fp32: cos in the first half of each row, sin in the
    second (vLLM's layout), see :func:`rope_cos_sin_cache`.
    """

    conv_dw_weight: Tensor
    conv_dw_bias: Tensor | None
    conv_g_weight: Tensor
    conv_g_bias: Tensor | None
    key_temp: Tensor
    cos_sin_cache: Tensor

    @property
    def head_dim(self) -> int:
        return int(self.conv_g_weight.shape[1])

    @property
    def num_kv_heads(self) -> int:
        return int(self.key_temp.numel())

    @property
    def num_q_heads(self) -> int:
        return int(self.conv_g_weight.shape[0]) // self.head_dim - self.num_kv_heads

    @property
    def state_len(self) -> int:
        """S = (t0 - 1) + (t1 - 1): tokens of left context the two convs see."""
        return int(self.conv_dw_weight.shape[-1]) - 1 + int(self.conv_g_weight.shape[-1]) - 1

    @property
    def rotary_dim(self) -> int:
        return int(self.cos_sin_cache.shape[-1])


class CCAPrefillOut(NamedTuple):
    """q ``[T, Hq, d]``, k/v ``[T, Hk, d]`` (after norm, temperature and RoPE: ready for causal GQA
    attention and the paged KV cache), and each sequence's final states ``conv_state [B, S, C]``,
    ``v_state [B, Hk*d/2]`` (what the next chunk or decode step starts from)."""

    q: Tensor
    k: Tensor
    v: Tensor
    conv_state: Tensor
    v_state: Tensor


class CCADecodeOut(NamedTuple):
    """q ``[N, Hq, d]``, k/v ``[N, Hk, d]`` for one token per request."""

    q: Tensor
    k: Tensor
    v: Tensor


def rope_cos_sin_cache(
    rotary_dim: int, theta: float, max_position: int, device: torch.device | str | None = None
) -> Tensor:
    """``[max_position, rotary_dim]`` fp32: ``cat(cos(f), sin(f))`` with ``f = pos * inv_freq``.

    Same float ops as ``ZayaRotaryEmbedding`` (inv_freq = 1 / theta ** (arange(0, dim, 2) / dim),
    freqs = pos.float() * inv_freq), so the fp32 values are bit-identical to transformers'.
    For ZAYA1: rotary_dim = int(head_dim * 0.5) = 64, theta = 5e6.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    freqs = torch.arange(max_position, dtype=torch.float)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)


def cca_params_from_hf(attn: Any, cos_sin_cache: Tensor) -> CCAParams:
    """Pull the CCA tensors out of a transformers ``ZayaAttention`` (duck-typed, no import)."""
    proj = attn.qkv_proj
    dw, g = proj.conv_qk_depthwise, proj.conv_qk_grouped
    return CCAParams(
        conv_dw_weight=dw.weight.detach(),
        conv_dw_bias=None if dw.bias is None else dw.bias.detach(),
        conv_g_weight=g.weight.detach(),
        conv_g_bias=None if g.bias is None else g.bias.detach(),
        key_temp=attn.qk_norm.temp.detach(),
        cos_sin_cache=cos_sin_cache,
    )


def _maybe_to(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _qk_norm_rope(q: Tensor, k: Tensor, positions: Tensor, p: CCAParams) -> tuple[Tensor, Tensor]:
    """ZayaQKNorm then partial neox RoPE, on ``[L, H, d]`` tensors, in transformers' op order."""
    d = q.shape[-1]
    scale = d**0.5
    eps = torch.finfo(q.dtype).eps
    q = q * (scale / q.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))
    k = k * (scale / k.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))
    k = k * p.key_temp.to(k.dtype)[None, :, None]

    half = p.rotary_dim // 2
    freqs = p.cos_sin_cache[positions.long()]  # [L, rd]
    cos = torch.cat([freqs[:, :half], freqs[:, :half]], dim=-1).to(q.dtype)[:, None, :]
    sin = torch.cat([freqs[:, half:], freqs[:, half:]], dim=-1).to(q.dtype)[:, None, :]
    rd = p.rotary_dim

    def rope(x: Tensor) -> Tensor:
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)

    return rope(q), rope(k)


def _cca_sequence(
    q_pre: Tensor,
    k_pre: Tensor,
    v_cur: Tensor,
    v_del: Tensor,
    positions: Tensor,
    p: CCAParams,
    conv_state: Tensor,
    v_state: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One sequence of L >= 0 tokens from given states: transformers' ZayaCCAProjection.forward
    (cached branch, i.e. cat(state, new) before the convs) + ZayaQKNorm + RoPE."""
    L = q_pre.shape[0]
    d, hq, hk = p.head_dim, p.num_q_heads, p.num_kv_heads
    groups = hq // hk
    S = p.state_len
    qk = torch.cat([q_pre, k_pre], dim=-1)  # [L, C]
    full = torch.cat([conv_state, qk], dim=0)  # [S + L, C]
    new_conv_state = full[full.shape[0] - S :].clone()
    if L == 0:
        empty = q_pre.new_empty((0, hq, d)), k_pre.new_empty((0, hk, d)), v_cur.new_empty((0, hk, d))
        return (*empty, new_conv_state, v_state.clone())

    query_residual = q_pre.view(L, hq, d)
    key_residual = k_pre.view(L, hk, d).repeat_interleave(groups, dim=1)
    query_residual = (query_residual + key_residual) * 0.5
    key_residual = query_residual.view(L, hk, groups, d).mean(dim=-2)

    x = full.t()[None]  # [1, C, S + L]
    dt = x.dtype
    x = F.conv1d(x, p.conv_dw_weight.to(dt), _maybe_to(p.conv_dw_bias, dt), groups=x.shape[1])
    x = F.conv1d(x, p.conv_g_weight.to(dt), _maybe_to(p.conv_g_bias, dt), groups=hq + hk)
    conv = x[0].t()  # [L, C]
    q = conv[:, : hq * d].reshape(L, hq, d) + query_residual
    k = conv[:, hq * d :].reshape(L, hk, d) + key_residual

    v_delayed = torch.cat([v_state[None], v_del[:-1]], dim=0)
    v = torch.cat([v_cur, v_delayed], dim=-1).view(L, hk, d)

    q, k = _qk_norm_rope(q, k, positions, p)
    return q, k, v, new_conv_state, v_del[-1].clone()


def _check(q_pre: Tensor, k_pre: Tensor, v_cur: Tensor, v_del: Tensor, p: CCAParams) -> None:
    d, hq, hk = p.head_dim, p.num_q_heads, p.num_kv_heads
    if hq <= 0 or hq % hk or q_pre.shape[-1] != hq * d or k_pre.shape[-1] != hk * d:
        raise ValueError(f"bad head layout: q_pre {tuple(q_pre.shape)} k_pre {tuple(k_pre.shape)} d={d} Hk={hk}")
    if (hk * d) % 2 or v_cur.shape[-1] != hk * d // 2 or v_del.shape[-1] != hk * d // 2:
        raise ValueError(f"v_cur/v_del must be [*, Hk*d/2], got {tuple(v_cur.shape)} {tuple(v_del.shape)}")
    if p.rotary_dim % 2 or p.rotary_dim > d:
        raise ValueError(f"rotary_dim {p.rotary_dim} must be even and <= head_dim {d}")
    if p.state_len < 1:
        raise ValueError("CCA needs cca_time0 + cca_time1 >= 3 (at least one token of conv state)")


def cca_prefill_ref(
    q_pre: Tensor,
    k_pre: Tensor,
    v_cur: Tensor,
    v_del: Tensor,
    cu_seqlens: Tensor,
    positions: Tensor,
    params: CCAParams,
    conv_state: Tensor | None = None,
    v_state: Tensor | None = None,
) -> CCAPrefillOut:
    """CCA q/k/v for packed variable-length sequences (prefill or a chunk of one).

    ``cu_seqlens [B+1]`` int32 offsets into the T packed tokens; ``positions [T]`` RoPE positions.
    ``conv_state [B, S, C]`` / ``v_state [B, Hk*d/2]``: each sequence's initial states (None: zeros,
    a fresh sequence). Inputs are not modified; the final states come back in the output.
    """
    _check(q_pre, k_pre, v_cur, v_del, params)
    d, hq, hk, S = params.head_dim, params.num_q_heads, params.num_kv_heads, params.state_len
    T, B = q_pre.shape[0], cu_seqlens.shape[0] - 1
    C = (hq + hk) * d
    if conv_state is None:
        conv_state = q_pre.new_zeros((B, S, C))
    if v_state is None:
        v_state = v_del.new_zeros((B, hk * d // 2))
    q = q_pre.new_empty((T, hq, d))
    k = k_pre.new_empty((T, hk, d))
    v = v_cur.new_empty((T, hk, d))
    fin_conv = conv_state.new_empty((B, S, C))
    fin_v = v_state.new_empty((B, hk * d // 2))
    bounds = cu_seqlens.tolist()
    for b in range(B):
        s, e = bounds[b], bounds[b + 1]
        q[s:e], k[s:e], v[s:e], fin_conv[b], fin_v[b] = _cca_sequence(
            q_pre[s:e], k_pre[s:e], v_cur[s:e], v_del[s:e], positions[s:e], params, conv_state[b], v_state[b]
        )
    return CCAPrefillOut(q, k, v, fin_conv, fin_v)


def cca_decode_ref(
    q_pre: Tensor,
    k_pre: Tensor,
    v_cur: Tensor,
    v_del: Tensor,
    positions: Tensor,
    params: CCAParams,
    conv_state: Tensor,
    v_state: Tensor,
    slot_idx: Tensor,
) -> CCADecodeOut:
    """One token for each of N requests, states in a slot cache (vLLM's Mamba-style state cache).

    ``conv_state [num_slots, S, C]`` and ``v_state [num_slots, Hk*d/2]`` are read at
    ``slot_idx [N]`` and updated IN PLACE (shifted by one token). ``slot_idx < 0`` marks a padding
    entry (vLLM's PAD_SLOT_ID = -1, e.g. CUDA-graph padding): it is computed from zero states and
    writes no state. Slots of real requests must be distinct.
    """
    _check(q_pre, k_pre, v_cur, v_del, params)
    n = q_pre.shape[0]
    d, hq, hk = params.head_dim, params.num_q_heads, params.num_kv_heads
    q = q_pre.new_empty((n, hq, d))
    k = k_pre.new_empty((n, hk, d))
    v = v_cur.new_empty((n, hk, d))
    for r, slot in enumerate(slot_idx.tolist()):
        cs = conv_state[slot] if slot >= 0 else torch.zeros_like(conv_state[0])
        vs = v_state[slot] if slot >= 0 else torch.zeros_like(v_state[0])
        sl = slice(r, r + 1)
        q[sl], k[sl], v[sl], new_cs, new_vs = _cca_sequence(
            q_pre[sl], k_pre[sl], v_cur[sl], v_del[sl], positions[sl], params, cs, vs
        )
        if slot >= 0:
            conv_state[slot] = new_cs
            v_state[slot] = new_vs
    return CCADecodeOut(q, k, v)


def gqa_causal_attention_ref(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Causal GQA softmax attention (scale d^-0.5) per packed sequence: ``[T, Hq*d]``. Used to run
    a whole CCA layer (and by the tests to compare with transformers' ZayaAttention output)."""
    out = q.new_empty((q.shape[0], q.shape[1] * q.shape[2]))
    groups = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        qs = q[s:e].transpose(0, 1)[None]
        ks = k[s:e].repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        vs = v[s:e].repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=1.0 / math.sqrt(q.shape[-1]))
        out[s:e] = o[0].transpose(0, 1).reshape(e - s, -1)
    return out
