"""Fused Triton CCA decode step: one token for each of N requests, states in a slot cache.

Per request it reads the conv state (last S raw q/k projection rows) and the delayed-value state
from the request's slot, computes q/k/v exactly as prefill does for a token with S tokens of
history, and shifts both states by one token in place - one launch, no gather/scatter copies.

Grid: (cdiv(N, 16), Hk * (G + 1)), one program per head (see _tile.py). 16 requests share a tile
so the grouped conv stays a tensor-core dot ([16, d] x [d, d]) and each program reads its head's
conv weights once for 16 requests.
In-place safety: programs of different heads own disjoint state channels, requests own
distinct slots, and inside a program every state row is read before a barrier that precedes its
rewrite.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from mrsa.kernels.cca import _args
from mrsa.kernels.cca._args import check_state, prepare
from mrsa.kernels.cca._tile import _cca_tile
from mrsa.kernels.cca.reference import CCADecodeOut, CCAParams
from mrsa.kernels.cca.variants import Variant, launch


@triton.jit
def _cca_decode_kernel(
    q_pre_ptr, sq, k_pre_ptr, sk, v_cur_ptr, svc, v_del_ptr, svd,
    pos_ptr, slot_ptr,
    conv_st_ptr, conv_sb, conv_ss, v_st_ptr, v_sb,
    wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, temp_ptr, cs_ptr,
    q_out_ptr, k_out_ptr, v_out_ptr,
    N, head_scale, norm_eps,
    HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    RD: tl.constexpr, BT: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_G_BIAS: tl.constexpr, IEEE: tl.constexpr,
):
    G: tl.constexpr = HQ // HK
    g = tl.program_id(1) // (G + 1)
    j = tl.program_id(1) % (G + 1)
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    row_ok = rows < N
    slot = tl.load(slot_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    st_ok = row_ok & (slot >= 0)  # PAD_SLOT_ID (< 0): zero states, nothing written back
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=0)
    pis = tl.zeros((BT,), dtype=tl.int32)  # every earlier token comes from the state
    _cca_tile(
        rows, row_ok, pis, pos, st_ok, slot * conv_sb, slot * v_sb, g, j,
        q_pre_ptr, sq, k_pre_ptr, sk, v_cur_ptr, svc, v_del_ptr, svd,
        conv_st_ptr, conv_ss, v_st_ptr,
        wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, temp_ptr, cs_ptr,
        q_out_ptr, k_out_ptr, v_out_ptr,
        head_scale, norm_eps,
        HQ, HK, D, K0, K1, RD, BT, HAS_DW_BIAS, HAS_G_BIAS, IEEE, True,
    )


def cca_decode(
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
    """Triton twin of :func:`kernels.cca.reference.cca_decode_ref` (same arguments and outputs).

    ``conv_state [num_slots, S, C]`` (unit channel stride; the slot stride is free, so it may be a
    view into a larger per-layer cache) and ``v_state [num_slots, Hk*d/2]`` are updated in place
    at ``slot_idx [N]`` (int32/int64; < 0 = padding). Real requests' slots must be distinct.
    """
    pp = prepare(q_pre, k_pre, v_cur, v_del, params)
    dev, dtype = q_pre.device, q_pre.dtype
    n = q_pre.shape[0]
    S = pp.k0 + pp.k1 - 2
    C = (pp.hq + pp.hk) * pp.d
    VH = pp.hk * pp.d // 2
    check_state(conv_state, v_state, None, S, C, VH, dtype)
    if v_state.dtype != v_del.dtype:
        raise ValueError("v_state dtype must match v_del")
    if slot_idx.shape != (n,):
        raise ValueError("need one slot index per request")
    q = _args.empty((n, pp.hq, pp.d), dtype, dev)
    k = _args.empty((n, pp.hk, pp.d), dtype, dev)
    v = _args.empty((n, pp.hk, pp.d), v_cur.dtype, dev)
    if n == 0:
        return CCADecodeOut(q, k, v)
    cfg = launch(Variant("decode", pp.geometry, dtype, pp.has_dw_bias, pp.has_g_bias, True), dev.type)
    _cca_decode_kernel[(triton.cdiv(n, cfg.block_rows), pp.hk * (pp.hq // pp.hk + 1))](
        q_pre, q_pre.stride(0), k_pre, k_pre.stride(0), v_cur, v_cur.stride(0), v_del, v_del.stride(0),
        positions, slot_idx,
        conv_state, conv_state.stride(0), conv_state.stride(1), v_state, v_state.stride(0),
        pp.wdw, pp.bdw, pp.wg, pp.bg, pp.temp, pp.cos_sin,
        q, k, v,
        n, pp.head_scale, pp.norm_eps,
        **cfg.kwargs(),
    )
    return CCADecodeOut(q, k, v)
