"""Compressed Convolutional Attention (CCA, ZAYA1) q/k/v kernels.

``cca_prefill`` / ``cca_decode`` are fused Triton kernels; ``cca_prefill_ref`` / ``cca_decode_ref``
are their plain PyTorch references with the same signatures (anchored to transformers' ZAYA
attention in tests/kernels). All produce q/k/v after CCA convs, q-k mean skip path, L2 norm,
key temperature and partial RoPE, ready for ordinary causal GQA attention.

Triton runs on CUDA; on a CPU-only machine set ``TRITON_INTERPRET=1`` before importing this
package (the tests do), or use the references.
"""

from mrsa.kernels.cca.decode import cca_decode
from mrsa.kernels.cca.prefill import cca_prefill
from mrsa.kernels.cca.reference import (
    CCADecodeOut,
    CCAParams,
    CCAPrefillOut,
    cca_decode_ref,
    cca_params_from_hf,
    cca_prefill_ref,
    gqa_causal_attention_ref,
    rope_cos_sin_cache,
)

__all__ = [
    "CCADecodeOut",
    "CCAParams",
    "CCAPrefillOut",
    "cca_decode",
    "cca_decode_ref",
    "cca_params_from_hf",
    "cca_prefill",
    "cca_prefill_ref",
    "gqa_causal_attention_ref",
    "rope_cos_sin_cache",
]
