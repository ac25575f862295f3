"""Fused Triton CCA prefill over packed variable-length sequences.

One launch does, per token, the depthwise + grouped causal convs, the q-k mean skip path, the L2
norm to sqrt(d), the key temperature, partial neox RoPE and the value shift, and writes q/k/v ready
for causal GQA attention. The same launch also writes each sequence's final conv/value states
(extra programs past the token tiles), so chunked prefill and decode continue from them.

Grid: (token tiles + B, Hk * (G + 1)): per tile, one program per query head and one per key head
(with the value head). A token finds its sequence by a binary search in ``cu_seqlens`` inside
the kernel, so there is no host sync and no per-token sequence-id tensor to build.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mrsa.kernels.cca import _args
from mrsa.kernels.cca._args import check_state, prepare
from mrsa.kernels.cca._tile import _cca_tile
from mrsa.kernels.cca.reference import CCAParams, CCAPrefillOut
from mrsa.kernels.cca.variants import Variant, launch


@triton.jit
def _cca_prefill_kernel(
    q_pre_ptr, sq, k_pre_ptr, sk, v_cur_ptr, svc, v_del_ptr, svd,
    cu_ptr, pos_ptr,
    init_conv_ptr, init_conv_sb, init_conv_ss, init_v_ptr, init_v_sb,
    wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, temp_ptr, cs_ptr,
    q_out_ptr, k_out_ptr, v_out_ptr, fin_conv_ptr, fin_v_ptr,
    T, B, n_tiles, search_steps, head_scale, norm_eps,
    HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    RD: tl.constexpr, BT: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_G_BIAS: tl.constexpr, IEEE: tl.constexpr, HAS_INIT: tl.constexpr,
):
    pid = tl.program_id(0)
    G: tl.constexpr = HQ // HK
    g = tl.program_id(1) // (G + 1)
    j = tl.program_id(1) % (G + 1)
    S: tl.constexpr = K0 + K1 - 2
    C: tl.constexpr = (HQ + HK) * D
    VH: tl.constexpr = HK * D // 2
    if pid < n_tiles:
        rows = pid * BT + tl.arange(0, BT)
        row_ok = rows < T
        # seq = max{b < B : cu[b] <= row}; empty sequences are skipped naturally.
        lo = tl.zeros((BT,), dtype=tl.int32)
        hi = lo + (B - 1)
        for _ in range(search_steps):
            mid = (lo + hi + 1) // 2
            ok = tl.load(cu_ptr + mid) <= rows
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        pis = rows - tl.load(cu_ptr + lo)
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=0)
        if HAS_INIT:
            st_ok = row_ok
        else:
            st_ok = tl.zeros((BT,), dtype=tl.int1)
        seq64 = lo.to(tl.int64)
        _cca_tile(
            rows, row_ok, pis, pos, st_ok, seq64 * init_conv_sb, seq64 * init_v_sb, g, j,
            q_pre_ptr, sq, k_pre_ptr, sk, v_cur_ptr, svc, v_del_ptr, svd,
            init_conv_ptr, init_conv_ss, init_v_ptr,
            wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, temp_ptr, cs_ptr,
            q_out_ptr, k_out_ptr, v_out_ptr,
            head_scale, norm_eps,
            HQ, HK, D, K0, K1, RD, BT, HAS_DW_BIAS, HAS_G_BIAS, IEEE, False,
        )
    else:
        # Final states of sequence b, this head's channels: the last S rows of [init_state; tokens].
        b = pid - n_tiles
        start = tl.load(cu_ptr + b)
        L = tl.load(cu_ptr + b + 1) - start
        cols = tl.arange(0, D)
        b64 = b.to(tl.int64)
        is_q = j < G
        cb = tl.where(is_q, (g * G + j) * D, HQ * D + g * D)
        x_base = tl.where(is_q, q_pre_ptr + cb, k_pre_ptr + g * D)
        xs = tl.where(is_q, sq, sk)
        for s in tl.static_range(S):
            r = L + s  # index into [init_state (S rows); tokens (L rows)]
            from_x = (r + 0 * cols) >= S
            val = tl.load(x_base + (start + r - S).to(tl.int64) * xs + cols, mask=from_x, other=0.0)
            if HAS_INIT:
                val += tl.load(init_conv_ptr + b64 * init_conv_sb + r * init_conv_ss + cb + cols, mask=~from_x, other=0.0)
            tl.store(fin_conv_ptr + (b64 * S + s) * C + cb + cols, val.to(fin_conv_ptr.dtype.element_ty))
        if j == G:
            # Value state: v_del of the last token; the group owns the delayed channels its v head reads.
            c = g * D + cols
            own = c >= VH
            cd = c - VH
            from_x = (L + 0 * cols) > 0
            val = tl.load(v_del_ptr + (start + L - 1).to(tl.int64) * svd + cd, mask=own & from_x, other=0.0)
            if HAS_INIT:
                val += tl.load(init_v_ptr + b64 * init_v_sb + cd, mask=own & ~from_x, other=0.0).to(val.dtype)
            tl.store(fin_v_ptr + b64 * VH + cd, val.to(fin_v_ptr.dtype.element_ty), mask=own)


def cca_prefill(
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
    """Triton twin of :func:`kernels.cca.reference.cca_prefill_ref` (same arguments and outputs).

    ``cu_seqlens`` must be int32 on the inputs' device; ``conv_state`` / ``v_state`` (initial
    states, one per sequence) are only read, so they may be gathered views of a slot cache but must
    not alias the outputs. Computes in fp32, stores in the inputs' dtype.
    """
    pp = prepare(q_pre, k_pre, v_cur, v_del, params)
    dev, dtype = q_pre.device, q_pre.dtype
    T, B = q_pre.shape[0], cu_seqlens.shape[0] - 1
    S = pp.k0 + pp.k1 - 2
    C = (pp.hq + pp.hk) * pp.d
    VH = pp.hk * pp.d // 2
    if cu_seqlens.dtype != torch.int32:
        raise ValueError("cu_seqlens must be int32")
    has_init = conv_state is not None or v_state is not None
    if has_init:
        if conv_state is None or v_state is None:
            raise ValueError("pass both initial states or neither")
        check_state(conv_state, v_state, B, S, C, VH, dtype)
    q = _args.empty((T, pp.hq, pp.d), dtype, dev)
    k = _args.empty((T, pp.hk, pp.d), dtype, dev)
    v = _args.empty((T, pp.hk, pp.d), v_cur.dtype, dev)
    fin_conv = _args.empty((B, S, C), dtype, dev)
    fin_v = _args.empty((B, VH), v_del.dtype, dev)
    if B == 0:
        return CCAPrefillOut(q, k, v, fin_conv, fin_v)
    init_conv = conv_state if has_init else fin_conv
    init_v = v_state if has_init else fin_v
    cfg = launch(Variant("prefill", pp.geometry, dtype, pp.has_dw_bias, pp.has_g_bias, has_init), dev.type)
    n_tiles = triton.cdiv(T, cfg.block_rows)
    _cca_prefill_kernel[(n_tiles + B, pp.hk * (pp.hq // pp.hk + 1))](
        q_pre, q_pre.stride(0), k_pre, k_pre.stride(0), v_cur, v_cur.stride(0), v_del, v_del.stride(0),
        cu_seqlens, positions,
        init_conv, init_conv.stride(0), init_conv.stride(1), init_v, init_v.stride(0),
        pp.wdw, pp.bdw, pp.wg, pp.bg, pp.temp, pp.cos_sin,
        q, k, v, fin_conv, fin_v,
        T, B, n_tiles, max(B - 1, 1).bit_length(), pp.head_scale, pp.norm_eps,
        **cfg.kwargs(),
    )
    return CCAPrefillOut(q, k, v, fin_conv, fin_v)
