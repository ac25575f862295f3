"""Write a tiny random ZAYA checkpoint (transformers format) with a small tokenizer of its own.

    python -m mrsa.engine.zaya.tiny OUT_DIR [--seed 0]

Used by tests/zaya to compare the vLLM model with transformers' ``ZayaForCausalLM`` on the same
weights, and to serve ZAYA end to end through the HTTP service on a CPU. The shape follows the
real model scaled down (hidden 256, 4 layers, 8 query / 2 KV heads of 32, 4 experts + skip).

Weights are drawn with ``initializer_range`` 0.2 and every tensor transformers initialises to a
constant (key temperatures, residual scales/biases, norm weights, router state scales,
balancing biases, conv biases) is perturbed too: with the default init the logits are nearly
uniform (greedy decoding degenerates) and a loader that swapped or dropped such a tensor would
go unnoticed.

The tokenizer is byte-level (256 byte tokens, no merges) plus Gemma-style turn markers and a chat
template, so any text round-trips and the service's chat path works.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unused0>", "<unused1>", "<unused2>"]
VOCAB_SIZE = len(SPECIALS) + 256
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    moe_intermediate_size=128,
    num_experts=4,
    router_hidden_size=64,
    max_position_embeddings=4096,
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=4,
    tie_word_embeddings=True,
)
_MARKER = ".tiny-zaya.json"


def build_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(seed: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import ZayaConfig, ZayaForCausalLM

    torch.manual_seed(seed)
    cfg = ZayaConfig(**CONFIG)
    model = ZayaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)

    def rand(shape: torch.Size, scale: float, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(shape, generator=gen)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qk_norm.temp"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith(("_scale", "norm.weight")):
                p.copy_(rand(p.shape, 0.1, 1.0))
            elif name.endswith(("hidden_states_bias", "residual_bias")) or ".conv_qk_" in name and name.endswith("bias"):
                p.copy_(rand(p.shape, 0.05))
        for name, b in model.named_buffers():
            if name.endswith("balancing_biases"):
                # The skip expert (last) included, so it gets chosen now and then. Note that
                # transformers' from_pretrained resets that last bias to -1 after loading (its
                # _init_weights assigns it directly); tests/zaya restores the checkpoint value.
                b.copy_(rand(b.shape, 0.1))
    return model


def write(out: Path, seed: int = 0) -> Path:
    """Write (or keep, if already there for this seed) the checkpoint in ``out``."""
    out = Path(out)
    marker = out / _MARKER
    want = {"seed": seed, "config": CONFIG}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return out
    out.mkdir(parents=True, exist_ok=True)
    build_model(seed).save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)
    marker.write_text(json.dumps(want))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write(args.out, args.seed))


if __name__ == "__main__":
    main()
