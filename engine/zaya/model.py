"""``ZayaForCausalLM`` for vLLM: ZAYA1 (CCA attention + top-1 MoE with a skip expert).

Mirrors transformers' ``modeling_zaya`` layer by layer (the executable reference; tests/zaya
compares logits and greedy tokens against it) and loads its checkpoint format unchanged:
tied embeddings, 3-D expert tensors, the router's previous-layer state, balancing biases,
fp32 residual stream with learned residual scaling.

vLLM sees a hybrid model: per layer an :class:`Attention` (paged K/V, ``2 * Hk * d`` values per
token) and a :class:`engine.zaya.state.CCAState` (conv + delayed-value state slots). Not
supported: tensor parallelism (CCA is not split across ranks: run data-parallel replicas),
pipeline parallelism, prefix caching, speculative decoding, CUDA graphs (see engine/zaya/plugin.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import get_temporal_copy_spec
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.sequence import IntermediateTensors

from mrsa.engine.zaya.cca_layer import SPLITS, ZayaAttention
from mrsa.engine.zaya.moe import CHECKPOINT_EXPERTS, ZayaSparseMoeBlock
from mrsa.engine.zaya.norm import ZayaResidualScaling, ZayaRMSNorm
from mrsa.engine.zaya.state import state_shapes
from mrsa.kernels.cca.reference import rope_cos_sin_cache


def rope_tables(cfg: object, max_len: int) -> dict[str, Tensor]:
    """fp32 cos|sin tables per layer type, same float ops as transformers' ZayaRotaryEmbedding."""
    tables = {}
    for layer_type in set(cfg.layer_types):  # type: ignore[attr-defined]
        rp = cfg.rope_parameters[layer_type]  # type: ignore[attr-defined]
        if rp.get("rope_type", "default") != "default":
            raise NotImplementedError(f"ZAYA rope_type {rp['rope_type']!r}")
        rotary_dim = int(cfg.head_dim * rp.get("partial_rotary_factor", 1.0))  # type: ignore[attr-defined]
        tables[layer_type] = rope_cos_sin_cache(rotary_dim, float(rp["rope_theta"]), max_len)
    return tables


class ZayaDecoderLayer(nn.Module):
    def __init__(self, cfg: object, idx: int, vllm_config: VllmConfig, cos_sin: Tensor, prefix: str) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps  # type: ignore[attr-defined]
        self.self_attn = ZayaAttention(cfg, idx, vllm_config, cos_sin, prefix=f"{prefix}.self_attn")
        self.mlp = ZayaSparseMoeBlock(cfg, idx, prefix=f"{prefix}.mlp")  # experts: vLLM's FusedMoE
        self.input_layernorm = ZayaRMSNorm(h, eps)
        self.post_attention_layernorm = ZayaRMSNorm(h, eps)
        self.post_attention_residual_scale = ZayaResidualScaling(h)
        self.post_mlp_residual_scale = ZayaResidualScaling(h)

    def forward(
        self, positions: Tensor, residual: Tensor, router_state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        dtype = self.input_layernorm.weight.dtype
        x = self.input_layernorm(residual.to(dtype))
        x = self.self_attn(positions, x)
        residual = self.post_attention_residual_scale(x, residual)
        x = self.post_attention_layernorm(residual.to(dtype))
        x, router_state = self.mlp(x, router_state)
        return self.post_mlp_residual_scale(x, residual), router_state


class ZayaModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        cfg = vllm_config.model_config.hf_config
        self.config = cfg
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(cfg.hidden_size))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(cfg.hidden_size))
        tables = rope_tables(cfg, vllm_config.model_config.max_model_len)
        self.layers = nn.ModuleList(
            ZayaDecoderLayer(cfg, i, vllm_config, tables[cfg.layer_types[i]], prefix=f"{prefix}.layers.{i}")
            for i in range(cfg.num_hidden_layers)
        )
        self.norm = ZayaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: Tensor | None, positions: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        x = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        residual = ((x + self.input_hidden_states_bias) * self.input_hidden_states_scale).to(torch.float32)
        router_state = None
        for layer in self.layers:
            residual, router_state = layer(positions, residual, router_state)
        return self.norm(residual.to(self.norm.weight.dtype))


class ZayaForCausalLM(nn.Module, HasInnerState, IsHybrid):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        cfg = vllm_config.model_config.hf_config
        self.config = cfg
        self.model = ZayaModel(vllm_config=vllm_config, prefix=_join(prefix, "model"))
        if cfg.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, bias=cfg.lm_head_bias)
        if getattr(cfg, "lm_head_bias", False) and cfg.tie_word_embeddings:
            raise NotImplementedError("ZAYA with tied embeddings and an lm_head bias")
        self.logits_processor = LogitsProcessor(cfg.vocab_size)

    # --- IsHybrid: what vLLM sizes the state cache (and the attention block size) from ---
    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
        return state_shapes(vllm_config.model_config.hf_config)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
        dtype = vllm_config.model_config.dtype
        return (dtype, dtype)

    @classmethod
    def get_mamba_state_copy_func(cls) -> tuple:
        # Both states are the whole history a step needs, so a checkpoint is a plain copy. Only
        # used by prefix caching's "align" mode, which the plugin's config hook turns off.
        return (get_temporal_copy_spec, get_temporal_copy_spec)

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: object,
    ) -> Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        """transformers' names and shapes; returns the parameter names filled. The 3-D expert
        tensors go to each block's FusedMoE weights through its weight loader."""
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        loaded: set[str] = set()
        for name, w in weights:
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding is the head
            split = next((s for s in SPLITS if f".qkv_proj.{s}.weight" in name), None)
            if split is not None:
                target = name.replace(f".qkv_proj.{split}.weight", ".qkv_proj.in_proj")
                _proj(self, target).load_split(split, w)
                loaded.add(target)
                continue
            block, _, kind = name.rpartition(".experts.")
            if kind in CHECKPOINT_EXPERTS and block.endswith(".mlp"):
                target = f"{block}.{self.get_submodule(block).load_checkpoint_experts(kind, w)}"
                loaded.add(target)
                continue
            if name in buffers:
                buffers[name].copy_(w)
                continue
            if name not in params:
                raise KeyError(f"ZAYA checkpoint tensor {name!r} has no place in the model")
            p = params[name]
            loader = getattr(p, "weight_loader", None)
            if loader is not None:
                loader(p, w)
            else:
                if p.shape != w.shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(w.shape)} != {tuple(p.shape)}")
                p.data.copy_(w)
            loaded.add(name)
        missing = set(params) - loaded
        if missing:
            raise ValueError(f"ZAYA checkpoint lacks {sorted(missing)[:8]} ({len(missing)} tensors)")
        return loaded


def _proj(model: nn.Module, in_proj_name: str) -> nn.Module:
    return model.get_submodule(in_proj_name.rsplit(".", 1)[0])


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
