"""CCA's per-request states in vLLM's hybrid (Mamba-style) state cache.

A ZAYA layer needs, besides the paged K/V, two small states per request (see
kernels/cca/reference.py): the conv state (the raw ``[q_pre; k_pre]`` rows of the last
``S = (t0-1)+(t1-1)`` tokens, time-major ``[S, C]``) and the delayed-value state (``v_del`` of the
previous token, ``[Hk*d/2]``). :class:`CCAState` declares them to vLLM as a ``MambaSpec`` layer, so
the engine allocates one slot per running request next to the paged K/V, hands out the slot ids
in the attention metadata and frees them with the request.

It reuses vLLM's SHORT_CONV state backend: its metadata (decode tokens first, then prefill
requests with their ``query_start_loc_p``, slots and ``has_initial_states_p``) is exactly what a
causal-conv layer needs, and CCA's conv is one. The backend's own conv kernels are not used; the
CCA ops run on the slots directly (:func:`cca_ops`: Triton on CUDA, the PyTorch reference
elsewhere, unless :data:`~engine.config.CCA_OPS_ENV` says otherwise).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import get_args

import torch
from torch import Tensor, nn
from vllm.config import VllmConfig
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from mrsa.engine.config import CCA_OPS_ENV, CcaOps
from mrsa.kernels.cca.reference import CCAParams, CCAPrefillOut, cca_decode_ref, cca_prefill_ref


def state_shapes(cfg: object) -> tuple[tuple[int, int], tuple[int]]:
    """``((S, C), (Hk*d/2,))`` for a ZayaConfig: conv state and delayed-value state per slot."""
    d, hq, hk = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads  # type: ignore[attr-defined]
    s = (cfg.cca_time0 - 1) + (cfg.cca_time1 - 1)  # type: ignore[attr-defined]
    return (s, (hq + hk) * d), (hk * d // 2,)


def cca_ops(device: torch.device) -> tuple[Callable[..., CCAPrefillOut], Callable[..., object]]:
    """(prefill, decode) for ``device`` under :data:`~engine.config.CCA_OPS_ENV`. The Triton and
    reference pairs share one signature (kernels/cca), so the layer code is the same either way."""
    return _ops(device.type, os.environ.get(CCA_OPS_ENV, "auto"))


@functools.cache
def _ops(device_type: str, mode: str) -> tuple[Callable[..., CCAPrefillOut], Callable[..., object]]:
    if mode not in get_args(CcaOps):
        raise ValueError(f"{CCA_OPS_ENV}={mode!r}: expected one of {', '.join(get_args(CcaOps))}")
    if mode == "reference" or (mode == "auto" and device_type != "cuda"):
        return cca_prefill_ref, cca_decode_ref
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton compiles for GPUs only; on other devices its interpreter runs the same kernels
        # (slowly), which is how CPU tests exercise this path inside vLLM.
        raise RuntimeError(f"{CCA_OPS_ENV}=triton on {device_type} needs TRITON_INTERPRET=1 in the engine's environment")
    from mrsa.kernels.cca.decode import cca_decode
    from mrsa.kernels.cca.prefill import cca_prefill

    return cca_prefill, cca_decode


class CCAState(MambaBase, nn.Module):
    """The state-cache half of one ZAYA attention layer (no parameters of its own)."""

    def __init__(self, hf_config: object, vllm_config: VllmConfig, prefix: str) -> None:
        nn.Module.__init__(self)
        self.prefix = prefix
        self._shapes = state_shapes(hf_config)
        self._dtype = vllm_config.model_config.dtype
        ctx = vllm_config.compilation_config.static_forward_context
        if prefix in ctx:
            raise ValueError(f"Duplicate layer name: {prefix}")
        ctx[prefix] = self
        self.kv_cache = (torch.tensor([]),)

    # --- MambaBase: what vLLM allocates per request slot ---
    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        return self._shapes

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return (self._dtype, self._dtype)

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.SHORT_CONV

    # --- the CCA q/k/v step over the batch, reading and updating the slots ---
    def forward(
        self, q_pre: Tensor, k_pre: Tensor, v_cur: Tensor, v_del: Tensor, positions: Tensor, params: CCAParams
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q ``[T, Hq*d]``, k/v ``[T, Hk*d]`` after CCA, norm, temperature and RoPE; rows past the
        batch's real tokens (padding) are zero."""
        prefill, decode = cca_ops(q_pre.device)
        n = q_pre.shape[0]
        md = None
        attn_metadata = get_forward_context().attn_metadata
        if isinstance(attn_metadata, dict):
            md = attn_metadata.get(self.prefix)
        if md is None:
            # Profiling / warm-up run: no slots yet; one fresh sequence of shape-correct work.
            cu = torch.tensor([0, n], dtype=torch.int32, device=q_pre.device)
            out = prefill(q_pre, k_pre, v_cur, v_del, cu, positions, params)
            return out.q.flatten(1), out.k.flatten(1), out.v.flatten(1)

        conv_cache, v_cache = self.kv_cache
        d, hq, hk = params.head_dim, params.num_q_heads, params.num_kv_heads
        q = q_pre.new_zeros((n, hq * d))
        k = k_pre.new_zeros((n, hk * d))
        v = v_cur.new_zeros((n, hk * d))
        nd, npf = md.num_decode_tokens, md.num_prefill_tokens
        if nd > 0:
            slots = md.state_indices_tensor_d[:, 0] if md.state_indices_tensor_d.dim() == 2 else md.state_indices_tensor_d
            dec = decode(
                q_pre[:nd], k_pre[:nd], v_cur[:nd], v_del[:nd], positions[:nd], params, conv_cache, v_cache, slots
            )
            q[:nd], k[:nd], v[:nd] = dec.q.flatten(1), dec.k.flatten(1), dec.v.flatten(1)
        if npf > 0:
            sl = slice(nd, nd + npf)
            slots = md.state_indices_tensor_p.long()
            has_init = md.has_initial_states_p
            init_conv = torch.where(has_init[:, None, None], conv_cache[slots], 0)
            init_v = torch.where(has_init[:, None], v_cache[slots], 0)
            cu = md.query_start_loc_p.to(torch.int32)
            out = prefill(q_pre[sl], k_pre[sl], v_cur[sl], v_del[sl], cu, positions[sl], params, init_conv, init_v)
            conv_cache[slots] = out.conv_state
            v_cache[slots] = out.v_state
            q[sl], k[sl], v[sl] = out.q.flatten(1), out.k.flatten(1), out.v.flatten(1)
        return q, k, v
