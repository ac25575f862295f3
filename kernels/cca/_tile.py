"""Triton building blocks shared by the CCA prefill and decode kernels.

One program handles a tile of BT token rows and ONE head of a KV-head group g: one of the group's
G query heads, or its key head together with its value head. The grouped conv has one group per
head, so programs of different heads touch disjoint channels of the conv state and only the key
head's program touches the group's value-state channels (which is what makes the decode kernel's
in-place state update race-free). The q-k mean skip path mixes the group's heads; the key head's
program reads the group's query rows for it.

Row model used for both kernels: row ``r`` reads its own input row, and ``pis`` ("position in
sequence") says how many earlier tokens of its sequence precede it in the same input; a tap at
``o`` tokens back comes from input row ``r - o`` when ``pis >= o`` and otherwise from the state
row ``S - o + pis`` (zero when there is no state). Prefill passes the true ``pis``; decode passes 0,
so every earlier tap comes from the slot's state.

All arithmetic is fp32. The grouped conv is a [BT, d] x [d, d] tensor-core dot per kernel tap; with
bf16 inputs its operand (the depthwise output) is rounded to bf16 first, which is exactly what
transformers' bf16 ``conv_qk_depthwise`` output is, and fp32 inputs use exact ``ieee`` dots (TF32
would miss the 1e-5 fp32 tolerance). Under TRITON_INTERPRET the bf16 dot is emulated with the same
rounding in fp32, because the interpreter multiplies bf16 tensors as raw 16-bit integers.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _conv_head(
    x_rows,  # [BT] pointers: this row's input, at the head's first channel
    x_stride,
    st_rows,  # [BT] pointers: this row's state block (S rows), at the head's first channel
    st_stride,
    pis,
    row_ok,
    st_ok,
    cb,  # the head's first channel in C = (Hq + Hk) * d
    wdw_ptr,
    bdw_ptr,
    wg_ptr,
    bg_ptr,
    cols,
    HQ: tl.constexpr,
    HK: tl.constexpr,
    D: tl.constexpr,
    K0: tl.constexpr,
    K1: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr,
    HAS_G_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Causal depthwise (K0 taps) then grouped (K1 taps, d x d per head) conv for one head: [BT, d].

    The exact fp32 (``IEEE``) dot, which runs on FMA units, contracts over input channels in
    chunks of 32 (the depthwise conv is per channel, so each chunk's operand is computed on its
    own): whole-d operands spilled kilobytes at d = 128. The tensor-core dot takes all d at once
    (chunks made it spill a little more)."""
    S: tl.constexpr = K0 + K1 - 2
    C: tl.constexpr = (HQ + HK) * D
    DK: tl.constexpr = 32 if IEEE and D > 32 else D
    acc = tl.zeros((x_rows.shape[0], D), dtype=tl.float32)
    for s in tl.static_range(K1):
        for kc in tl.static_range(D // DK):
            ck = kc * DK + tl.arange(0, DK)  # this chunk's input channels
            # Depthwise output at time t - (K1 - 1 - s); includes the bias even over zero padding,
            # as nn.Conv1d does on transformers' zero-padded input.
            dw = tl.zeros((x_rows.shape[0], DK), dtype=tl.float32)
            if HAS_DW_BIAS:
                dw += tl.load(bdw_ptr + cb + ck).to(tl.float32)[None, :]
            for a in tl.static_range(K0):
                o = (K1 - 1 - s) + (K0 - 1 - a)  # static_range indices: a compile-time constant
                # The tap is an input row or a state row (or zero): two masked loads with disjoint
                # masks, summed, rather than one load through a selected [BT, DK] pointer tile
                # (which would hold 64-bit pointers per element in registers).
                in_x = row_ok & (pis >= o)
                in_st = st_ok & (pis < o)
                xo = tl.load(x_rows[:, None] - o * x_stride + ck[None, :], mask=in_x[:, None], other=0.0).to(tl.float32)
                xo += tl.load(
                    st_rows[:, None] + (S - o + pis)[:, None] * st_stride + ck[None, :], mask=in_st[:, None], other=0.0
                ).to(tl.float32)
                w = tl.load(wdw_ptr + (cb + ck) * K0 + a).to(tl.float32)
                dw += xo * w[None, :]
            # W_s^T rows ck as a [DK, d_out] tile: tap s of the tap-major [K1, C, d] weight
            # (_args.tap_major) read as [d_out, DK] rows, transposed for the dot.
            wt = tl.trans(tl.load(wg_ptr + (s * C + cb + cols[:, None]) * D + ck[None, :]))
            if IEEE:
                # fp32 inputs, or the interpreter (whose bf16 dot is broken): round the operand to
                # the weight dtype like the tensor-core path, then an exact fp32 dot.
                acc = tl.dot(dw.to(wt.dtype).to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(dw.to(wt.dtype), wt, acc)
    if HAS_G_BIAS:
        acc += tl.load(bg_ptr + cb + cols).to(tl.float32)[None, :]
    return acc


@triton.jit
def _l2norm(x, scale, eps):
    """x * (scale / max(||x||, eps)): ZayaQKNorm (scale = sqrt(d), eps = finfo(input dtype).eps)."""
    n = tl.sqrt(tl.sum(x * x, axis=1))
    return x * (scale / tl.maximum(n, eps))[:, None]


@triton.jit
def _rope(x, cos, sin, BT: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, PARTIAL: tl.constexpr):
    """Neox RoPE on the first 2*HALF dims of each row of x [BT, D] (PARTIAL: 2*HALF == D/2, else
    2*HALF == D). Splits pairs (j, j + HALF) out with reshape/permute/split, so any HALF works
    (no dot with N = HALF, which would need HALF >= 16 on GPUs)."""
    if PARTIAL:
        x4 = tl.permute(tl.reshape(x, (BT, 2, 2, HALF)), (0, 3, 2, 1))  # [BT, HALF, half, rot/pass]
        rot, keep = tl.split(x4)
        x1, x2 = tl.split(rot)
        y = tl.join(tl.join(x1 * cos - x2 * sin, x2 * cos + x1 * sin), keep)
        return tl.reshape(tl.permute(y, (0, 3, 2, 1)), (BT, D))
    else:
        x3 = tl.permute(tl.reshape(x, (BT, 2, HALF)), (0, 2, 1))
        x1, x2 = tl.split(x3)
        y = tl.join(x1 * cos - x2 * sin, x2 * cos + x1 * sin)
        return tl.reshape(tl.permute(y, (0, 2, 1)), (BT, D))


@triton.jit
def _cca_tile(
    rows,  # [BT] input/output row indices
    row_ok,
    pis,  # [BT] earlier tokens of the same sequence present in the input (decode: 0)
    pos,  # [BT] RoPE positions
    st_ok,  # [BT] a state exists for this row (else zeros)
    conv_st_rows,  # [BT] element offset of the row's conv-state block [S, C]
    v_st_rows,  # [BT] element offset of the row's value-state row [Hk*d/2]
    g,  # KV-head group
    j,  # head in the group: j < G is query head g*G + j, j == G the group's key head (and value head)
    q_pre_ptr, sq, k_pre_ptr, sk, v_cur_ptr, svc, v_del_ptr, svd,
    conv_st_ptr, st_stride, v_st_ptr,
    wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, temp_ptr, cs_ptr,
    q_out_ptr, k_out_ptr, v_out_ptr,
    head_scale,
    norm_eps,
    HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    RD: tl.constexpr, BT: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_G_BIAS: tl.constexpr, IEEE: tl.constexpr,
    UPDATE_STATE: tl.constexpr,
):
    """q (j < G) or k and v (j == G) for a tile of rows and one head of group g; with UPDATE_STATE
    (decode) also shifts this head's channels of the conv state (and, for j == G, the group's value
    state channels) by one token, in place, after reading them.

    One head per program keeps one [BT, d] conv accumulator live at a time (the whole group in one
    program spilled on sm_90). The key's skip term, the group mean of (q_pre + k_pre) / 2, re-reads
    the group's G query rows instead of carrying a sum across heads."""
    G: tl.constexpr = HQ // HK
    S: tl.constexpr = K0 + K1 - 2
    HALF: tl.constexpr = RD // 2
    VH: tl.constexpr = HK * D // 2
    PARTIAL: tl.constexpr = RD * 2 == D
    cols = tl.arange(0, D)
    m2 = row_ok[:, None]
    r64 = rows.to(tl.int64)
    is_q = j < G
    h = g * G + j  # the query head, when is_q

    cb = tl.where(is_q, h * D, HQ * D + g * D)  # the head's first channel in C
    xs = tl.where(is_q, sq, sk)
    x_rows = tl.where(is_q, q_pre_ptr + h * D, k_pre_ptr + g * D) + r64 * xs
    st_rows = conv_st_ptr + conv_st_rows + cb
    conv = _conv_head(
        x_rows, xs, st_rows, st_stride, pis, row_ok, st_ok, cb,
        wdw_ptr, bdw_ptr, wg_ptr, bg_ptr, cols, HQ, HK, D, K0, K1, HAS_DW_BIAS, HAS_G_BIAS, IEEE,
    )
    kp = tl.load(k_pre_ptr + r64[:, None] * sk + g * D + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    if is_q:
        # q = conv + (q_pre + k_pre[group]) / 2
        skip = tl.load(x_rows[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        y = _l2norm(conv + (skip + kp) * 0.5, head_scale, norm_eps)
    else:
        # k = conv + mean over the group's query heads of (q_pre + k_pre) / 2
        skip = tl.zeros((BT, D), dtype=tl.float32)
        for i in range(G):
            skip += tl.load(
                q_pre_ptr + r64[:, None] * sq + (g * G + i) * D + cols[None, :], mask=m2, other=0.0
            ).to(tl.float32)
        y = _l2norm(conv + (skip / G + kp) * 0.5, head_scale, norm_eps)
        y = y * tl.load(temp_ptr + g).to(tl.float32)

    jh = tl.arange(0, HALF)
    cos = tl.load(cs_ptr + pos[:, None] * RD + jh[None, :], mask=m2, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + pos[:, None] * RD + HALF + jh[None, :], mask=m2, other=0.0).to(tl.float32)
    y = _rope(y, cos, sin, BT, D, HALF, PARTIAL)
    out_rows = tl.where(is_q, q_out_ptr + (r64 * HQ + h) * D, k_out_ptr + (r64 * HK + g) * D)
    tl.store(out_rows[:, None] + cols[None, :], y.to(q_out_ptr.dtype.element_ty), mask=m2)
    if UPDATE_STATE:
        # new_state[s] = old_state[s + 1] (s < S - 1), new_state[S - 1] = this token. The taps
        # above were read before the first barrier; every row is read before it is rewritten.
        wm = (row_ok & st_ok)[:, None]
        for s in tl.static_range(S - 1):
            old = tl.load(st_rows[:, None] + (s + 1) * st_stride + cols[None, :], mask=wm, other=0.0)
            tl.debug_barrier()
            tl.store(st_rows[:, None] + s * st_stride + cols[None, :], old, mask=wm)
        cur = tl.load(x_rows[:, None] + cols[None, :], mask=m2, other=0.0)
        tl.debug_barrier()
        tl.store(st_rows[:, None] + (S - 1) * st_stride + cols[None, :], cur.to(conv_st_ptr.dtype.element_ty), mask=wm)

    if j == G:
        # v = cat([v_cur, v_delayed], -1).view(Hk, d): head g covers flat channels g*d .. g*d + d - 1.
        c = g * D + cols
        is_cur = c < VH
        cd = c - VH  # channel in the delayed half
        cur_v = tl.load(v_cur_ptr + r64[:, None] * svc + c[None, :], mask=m2 & is_cur[None, :], other=0.0)
        from_prev = (pis >= 1)[:, None] & m2 & ~is_cur[None, :]
        from_st = (pis < 1)[:, None] & (row_ok & st_ok)[:, None] & ~is_cur[None, :]
        dl = tl.load(v_del_ptr + (r64 - 1)[:, None] * svd + cd[None, :], mask=from_prev, other=0.0)
        dl += tl.load(v_st_ptr + v_st_rows[:, None] + cd[None, :], mask=from_st, other=0.0).to(dl.dtype)
        v = tl.where(is_cur[None, :], cur_v, dl.to(cur_v.dtype))
        tl.store(v_out_ptr + (r64 * HK + g)[:, None] * D + cols[None, :], v.to(v_out_ptr.dtype.element_ty), mask=m2)
        if UPDATE_STATE:
            # This group rewrites exactly the value-state channels it read above.
            nv = tl.load(v_del_ptr + r64[:, None] * svd + cd[None, :], mask=m2 & ~is_cur[None, :], other=0.0)
            tl.debug_barrier()
            tl.store(
                v_st_ptr + v_st_rows[:, None] + cd[None, :], nv.to(v_st_ptr.dtype.element_ty),
                mask=(row_ok & st_ok)[:, None] & ~is_cur[None, :],
            )
