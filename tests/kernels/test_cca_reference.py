"""Anchor kernels/cca/reference.py to transformers' ZAYA attention, and prove its states compose:
prefill of a whole sequence == prefill of a prefix (or chunks) + one-token decode steps."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mrsa.kernels.cca.reference import (
    CCAParams,
    cca_decode_ref,
    cca_params_from_hf,
    cca_prefill_ref,
    gqa_causal_attention_ref,
    rope_cos_sin_cache,
)
from tests.kernels.conftest import Seeded
from tests.kernels.zaya_hf import HFZaya, tiny_config

# (Hq, Hk, d): ZAYA1's 4:1 grouping, 2:1, and an odd Hk whose value head straddles v_cur/v_delayed.
HEADS = [(8, 2, 16), (4, 2, 32), (3, 1, 16)]


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def _setup(rng: Seeded, heads: tuple[int, int, int], dtype: torch.dtype) -> tuple[HFZaya, CCAParams]:
    hq, hk, d = heads
    hf = HFZaya(tiny_config(hq, hk, d), rng.gen, dtype)
    params = cca_params_from_hf(hf.attn, rope_cos_sin_cache(hf.rotary_dim, hf.theta, 256))
    return hf, params


@pytest.mark.parametrize("heads", HEADS)
def test_prefill_ref_matches_transformers_fp32(rng: Seeded, heads: tuple[int, int, int]) -> None:
    hf, params = _setup(rng, heads, torch.float32)
    n = 11
    x = torch.randn(n, hf.cfg.hidden_size, generator=rng.gen)
    start = int(rng.randint(0, 100, 1))  # positions need not start at 0 for RoPE
    positions = torch.arange(start, start + n)
    cache = hf.new_cache()
    hq_, hk_, hv_, hout = hf.forward(x, positions, cache)

    out = cca_prefill_ref(*hf.projections(x), torch.tensor([0, n], dtype=torch.int32), positions, params)
    for name, ours, theirs in (("q", out.q, hq_), ("k", out.k, hk_), ("v", out.v, hv_)):
        assert ours.shape == theirs.shape, name
        # Same ops in the same order on the same device: bit-identical, not just close.
        assert torch.equal(ours, theirs), (name, rel_err(ours, theirs), rng.seed)

    conv_state, v_state = hf.cache_states(cache)
    assert torch.equal(out.conv_state[0], conv_state.t()), rng.seed
    assert torch.equal(out.v_state[0], v_state), rng.seed

    # The whole layer (our q/k/v -> causal GQA -> o_proj) equals the module's output.
    attn = gqa_causal_attention_ref(out.q, out.k, out.v, torch.tensor([0, n]))
    layer = hf.attn.o_proj(attn)
    assert rel_err(layer, hout) < 1e-5, (rel_err(layer, hout), rng.seed)


def test_prefill_ref_matches_transformers_bf16(rng: Seeded) -> None:
    """Same op order and dtypes as transformers (bf16 convs, bf16 cos/sin), so bf16 is bit-identical too."""
    hf, params = _setup(rng, (8, 2, 16), torch.bfloat16)
    n = 9
    x = torch.randn(n, hf.cfg.hidden_size, generator=rng.gen).bfloat16()
    positions = torch.arange(n)
    hq_, hk_, hv_, _ = hf.forward(x, positions, None)
    out = cca_prefill_ref(*hf.projections(x), torch.tensor([0, n], dtype=torch.int32), positions, params)
    for name, ours, theirs in (("q", out.q, hq_), ("k", out.k, hk_), ("v", out.v, hv_)):
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, theirs), (name, rel_err(ours, theirs), rng.seed)


@pytest.mark.parametrize("heads", HEADS[:2])
def test_decode_ref_matches_transformers_cache(rng: Seeded, heads: tuple[int, int, int]) -> None:
    """transformers prefill + cached one-token steps vs our prefill + slot-cache decode steps."""
    hf, params = _setup(rng, heads, torch.float32)
    prefix, steps = int(rng.randint(1, 6, 1)), 4
    n = prefix + steps
    x = torch.randn(n, hf.cfg.hidden_size, generator=rng.gen)
    positions = torch.arange(n)
    cache = hf.new_cache()
    hf.forward(x[:prefix], positions[:prefix], cache)

    q_pre, k_pre, v_cur, v_del = hf.projections(x)
    pre = cca_prefill_ref(
        q_pre[:prefix], k_pre[:prefix], v_cur[:prefix], v_del[:prefix],
        torch.tensor([0, prefix], dtype=torch.int32), positions[:prefix], params,
    )
    slots = 5
    slot = int(rng.randint(0, slots, 1))
    conv_cache = torch.randn(slots, *pre.conv_state.shape[1:], generator=rng.gen)
    v_cache = torch.randn(slots, pre.v_state.shape[1], generator=rng.gen)
    conv_cache[slot], v_cache[slot] = pre.conv_state[0], pre.v_state[0]
    others = [i for i in range(slots) if i != slot]
    untouched = conv_cache[others].clone(), v_cache[others].clone()

    for t in range(prefix, n):
        hq_, hk_, hv_, _ = hf.forward(x[t : t + 1], positions[t : t + 1], cache)
        sl = slice(t, t + 1)
        out = cca_decode_ref(
            q_pre[sl], k_pre[sl], v_cur[sl], v_del[sl], positions[sl], params,
            conv_cache, v_cache, torch.tensor([slot], dtype=torch.int32),
        )
        for name, ours, theirs in (("q", out.q, hq_), ("k", out.k, hk_), ("v", out.v, hv_)):
            assert rel_err(ours, theirs) < 1e-6, (t, name, rel_err(ours, theirs), rng.seed)
        conv_state, v_state = hf.cache_states(cache)
        # Raw projection rows: equal up to GEMM rounding (transformers projects one row at a time).
        assert torch.allclose(conv_cache[slot], conv_state.t(), rtol=1e-5, atol=1e-6), (t, rng.seed)
        assert torch.allclose(v_cache[slot], v_state, rtol=1e-5, atol=1e-6), (t, rng.seed)
    assert torch.equal(conv_cache[others], untouched[0]) and torch.equal(v_cache[others], untouched[1])


def _random_params(rng: Seeded, hq: int, hk: int, d: int, t0: int = 2, t1: int = 2) -> CCAParams:
    c = (hq + hk) * d
    return CCAParams(
        conv_dw_weight=torch.randn(c, 1, t0, generator=rng.gen) * 0.5,
        conv_dw_bias=torch.randn(c, generator=rng.gen) * 0.5,
        conv_g_weight=torch.randn(c, d, t1, generator=rng.gen) / d**0.5,
        conv_g_bias=torch.randn(c, generator=rng.gen) * 0.5,
        key_temp=torch.randn(hk, generator=rng.gen),
        cos_sin_cache=rope_cos_sin_cache(d // 2, 1e4, 512),
    )


@pytest.mark.parametrize("taps", [(2, 2), (3, 2)])
def test_prefill_prefix_then_decode_equals_full_prefill(rng: Seeded, taps: tuple[int, int]) -> None:
    """Packed ragged batch: full prefill == chunked prefill (prefix chunk, states carried into the
    rest) == prefix prefill + one-token decode steps through a slot cache."""
    hq, hk, d = 4, 2, 16
    params = _random_params(rng, hq, hk, d, *taps)
    lens = [1, 5, 9]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    n = int(cu[-1])
    pos = torch.cat([torch.arange(L) for L in lens])
    q_pre, k_pre = torch.randn(n, hq * d, generator=rng.gen), torch.randn(n, hk * d, generator=rng.gen)
    v_cur, v_del = torch.randn(n, hk * d // 2, generator=rng.gen), torch.randn(n, hk * d // 2, generator=rng.gen)
    full = cca_prefill_ref(q_pre, k_pre, v_cur, v_del, cu, pos, params)

    # Chunked: first `cut` tokens of every sequence, then the rest starting from those states.
    cuts = [0, 2, 4]
    idx1 = torch.cat([torch.arange(int(cu[b]), int(cu[b]) + cuts[b]) for b in range(3)])
    idx2 = torch.cat([torch.arange(int(cu[b]) + cuts[b], int(cu[b + 1])) for b in range(3)])

    def cu_of(ls: list[int]) -> Tensor:
        return torch.tensor([0, *torch.tensor(ls).cumsum(0).tolist()], dtype=torch.int32)

    a = cca_prefill_ref(q_pre[idx1], k_pre[idx1], v_cur[idx1], v_del[idx1], cu_of(cuts), pos[idx1], params)
    rest = [L - c for L, c in zip(lens, cuts)]
    b = cca_prefill_ref(
        q_pre[idx2], k_pre[idx2], v_cur[idx2], v_del[idx2], cu_of(rest), pos[idx2], params,
        a.conv_state, a.v_state,
    )
    for name in ("q", "k", "v"):
        got = torch.empty_like(getattr(full, name))
        got[idx1], got[idx2] = getattr(a, name), getattr(b, name)
        assert torch.allclose(got, getattr(full, name), atol=1e-6, rtol=1e-5), (name, rng.seed)
    assert torch.equal(b.conv_state, full.conv_state) and torch.equal(b.v_state, full.v_state)

    # Decode: prefix prefill, then one token per sequence per step; sequence b lives in slot 2b+1.
    conv_cache = torch.full((7, *full.conv_state.shape[1:]), float("nan"))
    v_cache = torch.full((7, full.v_state.shape[1]), float("nan"))
    slots = torch.tensor([1, 3, 5], dtype=torch.int32)
    conv_cache[slots.long()], v_cache[slots.long()] = a.conv_state, a.v_state
    for step in range(max(rest)):
        live = [b for b in range(3) if step < rest[b]]
        tok = torch.tensor([int(cu[b]) + cuts[b] + step for b in live])
        sl = torch.tensor([int(slots[b]) for b in live] + [-1], dtype=torch.int32)  # plus a padding entry
        tok_p = torch.cat([tok, tok[:1]])
        out = cca_decode_ref(
            q_pre[tok_p], k_pre[tok_p], v_cur[tok_p], v_del[tok_p], pos[tok_p], params, conv_cache, v_cache, sl
        )
        for name in ("q", "k", "v"):
            assert torch.allclose(getattr(out, name)[:-1], getattr(full, name)[tok], atol=1e-6, rtol=1e-5), (
                step, name, rng.seed,
            )
    assert torch.equal(conv_cache[slots.long()], full.conv_state)
    assert torch.equal(v_cache[slots.long()], full.v_state)
    assert conv_cache[[0, 2, 4, 6]].isnan().all() and v_cache[[0, 2, 4, 6]].isnan().all()
