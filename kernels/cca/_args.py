"""Argument checks and weight preparation shared by the Triton wrappers."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from mrsa.kernels.cca.reference import CCAParams, _check
from mrsa.kernels.cca.variants import Geometry


@dataclass(frozen=True)
class Prepared:
    """Kernel-ready views of a layer's CCA tensors (weights in the activation dtype, as in the
    model, so bf16 dots see the same operands transformers' bf16 convs do)."""

    wdw: Tensor  # [C, K0]
    bdw: Tensor  # [C] (dummy when absent)
    wg: Tensor  # [K1, C, d]: conv_g_weight tap-major, so a tap's [d, d] tile loads in wide rows
    bg: Tensor
    temp: Tensor  # [Hk]
    cos_sin: Tensor  # [max_pos, rotary_dim]
    has_dw_bias: bool
    has_g_bias: bool
    hq: int
    hk: int
    d: int
    k0: int
    k1: int
    rd: int
    head_scale: float
    norm_eps: float

    @property
    def geometry(self) -> Geometry:
        return Geometry(hq=self.hq, hk=self.hk, d=self.d, k0=self.k0, k1=self.k1, rd=self.rd)


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every output buffer of the Triton wrappers comes from here, so tests can swap in a
    NaN-filled allocator and prove each element is written."""
    return torch.empty(shape, dtype=dtype, device=device)


_TAP_MAJOR: dict[int, tuple[int, torch.dtype, Tensor]] = {}


def tap_major(w: Tensor, dtype: torch.dtype) -> Tensor:
    """conv_g_weight [C, d, K1] as [K1, C, d] in ``dtype``, made once per weight (and again only if
    the weight is modified in place): a layer's weights outlive many calls, and the copy would
    otherwise be an extra kernel launch per layer and step."""
    hit = _TAP_MAJOR.get(id(w))
    if hit is not None and hit[0] == w._version and hit[1] == dtype:
        return hit[2]
    out = w.to(dtype).permute(2, 0, 1).contiguous()
    if hit is None:
        weakref.finalize(w, _TAP_MAJOR.pop, id(w), None)
    _TAP_MAJOR[id(w)] = (w._version, dtype, out)
    return out


def prepare(q_pre: Tensor, k_pre: Tensor, v_cur: Tensor, v_del: Tensor, p: CCAParams) -> Prepared:
    _check(q_pre, k_pre, v_cur, v_del, p)
    dtype = q_pre.dtype
    if k_pre.dtype != dtype:
        raise ValueError("q_pre and k_pre must share a dtype (they share the conv state)")
    if v_cur.dtype != v_del.dtype:
        raise ValueError("v_cur and v_del must share a dtype")
    for name, t in (("q_pre", q_pre), ("k_pre", k_pre), ("v_cur", v_cur), ("v_del", v_del)):
        if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
            raise ValueError(f"{name} must be 2-D with unit column stride, got strides {t.stride()}")
    d, hq, hk = p.head_dim, p.num_q_heads, p.num_kv_heads
    if d < 16 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 (tensor-core dot), got {d}")
    if p.rotary_dim not in (d, d // 2):
        raise ValueError(f"rotary_dim must be head_dim or head_dim/2, got {p.rotary_dim} for d={d}")
    c = (hq + hk) * d
    k0, k1 = int(p.conv_dw_weight.shape[-1]), int(p.conv_g_weight.shape[-1])
    if tuple(p.conv_dw_weight.shape) != (c, 1, k0) or tuple(p.conv_g_weight.shape) != (c, d, k1):
        raise ValueError("conv weights must be [C, 1, t0] and [C, d, t1]")
    wdw = p.conv_dw_weight.to(dtype).reshape(c, k0).contiguous()
    wg = tap_major(p.conv_g_weight, dtype)
    return Prepared(
        wdw=wdw,
        bdw=wdw if p.conv_dw_bias is None else p.conv_dw_bias.to(dtype).contiguous(),
        wg=wg,
        bg=wdw if p.conv_g_bias is None else p.conv_g_bias.to(dtype).contiguous(),
        temp=p.key_temp.to(dtype).contiguous(),
        cos_sin=p.cos_sin_cache.contiguous(),
        has_dw_bias=p.conv_dw_bias is not None,
        has_g_bias=p.conv_g_bias is not None,
        hq=hq,
        hk=hk,
        d=d,
        k0=k0,
        k1=k1,
        rd=p.rotary_dim,
        head_scale=d**0.5,
        norm_eps=torch.finfo(dtype).eps,
    )


def check_state(conv_state: Tensor, v_state: Tensor, rows: int | None, s: int, c: int, vh: int, dtype: torch.dtype) -> None:
    """conv_state [rows, S, C] with unit channel stride; v_state [rows, Hk*d/2] with unit stride."""
    if conv_state.dim() != 3 or conv_state.shape[1:] != (s, c) or conv_state.stride(2) != 1:
        raise ValueError(f"conv_state must be [*, {s}, {c}] with unit channel stride, got {tuple(conv_state.shape)}")
    if v_state.dim() != 2 or v_state.shape[1] != vh or v_state.stride(1) != 1:
        raise ValueError(f"v_state must be [*, {vh}] with unit channel stride, got {tuple(v_state.shape)}")
    if rows is not None and (conv_state.shape[0] != rows or v_state.shape[0] != rows):
        raise ValueError(f"need one state per sequence ({rows})")
    if conv_state.dtype != dtype:
        raise ValueError(f"conv_state dtype {conv_state.dtype} must match q_pre/k_pre ({dtype})")
