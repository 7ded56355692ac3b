"""Sequence-to-sequence Transformers built from a `transformers` config (Marian, the architecture of the
Helsinki-NLP / Marian NMT models), with random weights: nothing is downloaded.

Builders are registered in MODELS, marked `.task = "language_generation"`, and take (vocab_size, pad_id, eos_id,
max_length).  Token ids come from the task's in-project tokenizer (`tokenizer.py`); the decoder starts from
<pad>, Marian's convention.  Input and output embeddings are NOT tied (`tie_word_embeddings=False`): Fast FIP
reparameterises every Linear layer, and a tied output projection would silently rewrite the embedding table
too (embeddings are nn.Embedding and stay frozen under Fast FIP).  Attention is the eager implementation:
FIP's trace term needs a double backward, which PyTorch's fused CPU attention kernels do not provide.

- `small_marian`: 2 encoder + 2 decoder layers, d_model 128, 4 heads, FFN 256 (about 0.6 M parameters plus
  embeddings): trains in a minute on a CPU, for the quick preset and the tests.
- `marian_base`: the Transformer-base setting of the NLG backdoor papers (6 + 6 layers, d_model 512, 8 heads,
  FFN 2048).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from transformers import MarianConfig, MarianMTModel

from benchmark.registries import MODELS


def _marian(layers: int, d_model: int, heads: int, ffn: int, dropout: float) -> Callable[..., nn.Module]:
    def build(vocab_size: int, pad_id: int, eos_id: int, max_length: int = 128) -> nn.Module:
        cfg = MarianConfig(vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=d_model,
                           encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                           decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                           dropout=dropout, attention_dropout=0.0, activation_dropout=0.0,
                           max_position_embeddings=max_length, pad_token_id=pad_id, eos_token_id=eos_id,
                           decoder_start_token_id=pad_id, forced_eos_token_id=eos_id, scale_embedding=True,
                           share_encoder_decoder_embeddings=True, tie_word_embeddings=False)
        # Plain attention: FIP's trace term differentiates twice, and PyTorch's fused CPU attention kernels
        # have no double backward.
        cfg._attn_implementation = "eager"
        return MarianMTModel(cfg)
    build.__doc__ = f"Marian seq2seq, {layers}+{layers} layers, d_model {d_model}, {heads} heads, FFN {ffn}."
    return build


for _name, _args in (("small_marian", (2, 128, 4, 256, 0.1)), ("marian_base", (6, 512, 8, 2048, 0.1))):
    _fn = _marian(*_args)
    _fn.task = "language_generation"  # type: ignore[attr-defined]
    MODELS.register(_name)(_fn)
