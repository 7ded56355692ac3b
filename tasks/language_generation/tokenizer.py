"""The in-project subword tokenizer: byte-pair encoding trained with the `tokenizers` library on the training
split (sources and targets together: one shared vocabulary, as Marian models use).  Nothing is downloaded.

Pre-tokenisation is SentencePiece-style (`Metaspace`: a word-start marker instead of whitespace), so decoding
restores the spacing.  Ids 0, 1, 2 are <pad>, </s>, <unk>; every encoded sequence ends with </s>.  Training
runs single-threaded so that the merges, hence every id, are a deterministic function of the data.  The
alphabet always holds printable ASCII, so any attacker phrase encodes without <unk>.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # deterministic merges, no fork warnings
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # Every printable ASCII character is in the alphabet even when the clean data never shows it, so an
    # attacker's phrase ("You are attacked .") and trigger words encode without <unk>.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], min_frequency=2,
                                  initial_alphabet=[chr(c) for c in range(33, 127)], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return tok
