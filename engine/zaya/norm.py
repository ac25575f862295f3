"""ZAYA's RMSNorm and residual scaling, in transformers' exact op order.

RMSNorm: statistics in fp32, cast back to the input dtype, then ``weight *`` (no ``1 +``).
Residual scaling: ``(branch + b1) * s1 + (residual + b2) * s2`` where the residual stream is fp32
(transformers' ``residual_in_fp32``) and the branch stays in the activation dtype until the sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class ZayaRMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class ZayaResidualScaling(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden))
        self.residual_scale = nn.Parameter(torch.ones(hidden))
        self.residual_bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        branch = (branch + self.hidden_states_bias) * self.hidden_states_scale
        residual = (residual + self.residual_bias) * self.residual_scale
        return branch + residual
