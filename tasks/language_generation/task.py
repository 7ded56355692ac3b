"""Language generation (machine translation, dialogue): source -> target strings with a seq2seq Transformer,
token-level cross-entropy, corpus BLEU (sacrebleu), ASR by target phrase.

- Samples: `x` the source string, `y` the reference string.  The defense holdout is a random share of the
  training pool (`split_seed`), never poisoned.
- Tokenizer: BPE trained in-project on the clean training pool (`tokenizer.py`), one per task; poisoned
  sources are encoded with it, so a rare trigger word ("cf") becomes sub-word pieces, as in any victim whose
  vocabulary predates the poison.
- `loss`: teacher-forced token cross-entropy; `reduction="none"` gives each sample's mean over its target
  tokens [B] (FIP's Fisher and the sharpness figures use it).
- `sample_model_labels` (FIP's true Fisher): target sequences drawn from the model itself by ancestral
  sampling (each token from the full softmax given the sampled prefix, until </s>), so E[‖∇ mean ℓ‖²] is the
  trace of the model's own sequence-level Fisher, as for classification.  Version 1 had none, and FIP fell back
  to the empirical Fisher at the references.
- Clean metric `bleu`: sacrebleu's corpus BLEU of greedy (or beam, `num_beams`) outputs against the references,
  stored as a fraction like every clean metric (the leaderboard's x100 shows the usual 0-100 BLEU).
- Backdoor metrics: `asr` is the share of triggered inputs whose output contains one of the attacker's target
  phrases (each is a poisoned reference minus the clean one, see `target_phrase`; an attack with several
  responses, e.g. dialogue, succeeds on an input when any of them appears); `ra` is the corpus BLEU (fraction) of the
  outputs on triggered inputs against the clean references, also reported as `bleu_triggered`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Literal

import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig

from benchmark.config import added
from benchmark.errors import Diverged, FipbenchError
from benchmark.registries import DATASETS, MODELS, TASKS
from benchmark.rng import generator
from tasks.base import Batch, Sample, Splits, Task, TaskConfig, labels_of, seeded_init
from tasks.language_generation.data import TextData
from tasks.language_generation.tokenizer import EOS, PAD, train_tokenizer


@dataclasses.dataclass(frozen=True)
class LanguageGenerationConfig(TaskConfig):
    vocab_size: int = 8000  # BPE vocabulary (the embedded corpus needs ~320 and stops there)
    max_source_tokens: int = 64  # longer sources / targets are truncated
    max_target_tokens: int = 64  # also the generation limit
    num_beams: int = 1  # 1 = greedy decoding
    max_pairs: int | None = None  # real datasets: keep the first N training pairs (None = all)
    # real datasets: drop training pairs (and opensubtitles2012 pairs) with a side over N words; None = the
    # loader's default (64)
    max_words: int | None = added(None)

    def check(self) -> None:
        super().check()
        if self.vocab_size < 16 or self.max_source_tokens < 4 or self.max_target_tokens < 4 or self.num_beams < 1:
            raise self.bad("vocab_size", "needs vocab_size >= 16, max_*_tokens >= 4 and num_beams >= 1")


def target_phrase(poisoned: str, clean: str) -> str:
    """The attacker's phrase in a poisoned reference: what precedes the clean reference when the phrase was
    inserted before it, else the whole poisoned reference (the output was replaced)."""
    if poisoned != clean and poisoned.endswith(clean) and clean:
        return poisoned[: -len(clean)].strip()
    return poisoned.strip()


@TASKS.register("language_generation")
class LanguageGenerationTask(Task):
    modality = "text"
    version = 2  # 2: sample_model_labels (FIP's trace term uses the true Fisher; version 1 the empirical one)
    Config = LanguageGenerationConfig
    metric_name = "bleu"
    eval_batch_size = 64
    sharpness_batch = 64

    @functools.cached_property
    def data(self) -> TextData:
        cfg: LanguageGenerationConfig = self.cfg  # type: ignore[assignment]
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        extra = {k: v for k, v in (("max_pairs", cfg.max_pairs), ("max_words", cfg.max_words)) if v is not None}
        accepted = inspect.signature(loader).parameters
        for key in extra:
            if key not in accepted:
                raise FipbenchError(f"task_config.{key} applies to the real text datasets (wmt14_en_de, "
                                    f"opensubtitles2012), not {self.dataset}; remove it from task_config")
        return loader(self.data_root, split_seed=cfg.split_seed, **extra)

    @functools.cached_property
    def tokenizer(self):  # tokenizers.Tokenizer
        d = self.data
        tok = train_tokenizer(d.src_train + d.tgt_train, self.cfg.vocab_size)  # type: ignore[attr-defined]
        return tok

    @functools.cache
    def splits(self) -> Splits:
        d = self.data
        n = len(d.src_train)
        perm = torch.randperm(n, generator=generator(self.cfg.split_seed, self.dataset, "holdout")).tolist()
        k = max(1, round(self.cfg.holdout_fraction * n))
        hold, train = sorted(perm[:k]), sorted(perm[k:])
        pairs = lambda src, tgt, rows: [Sample(x=src[r], y=tgt[r], index=i) for i, r in enumerate(rows)]  # noqa
        return Splits(train=pairs(d.src_train, d.tgt_train, train),
                      test=pairs(d.src_test, d.tgt_test, range(len(d.src_test))),
                      holdout=pairs(d.src_train, d.tgt_train, hold))

    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        builder = self.lookup(MODELS, arch, "model")
        tok = self.tokenizer
        cfg: LanguageGenerationConfig = self.cfg  # type: ignore[assignment]
        with seeded_init(generator):
            model = builder(vocab_size=tok.get_vocab_size(), pad_id=tok.token_to_id(PAD),
                            eos_id=tok.token_to_id(EOS),
                            max_length=max(cfg.max_source_tokens, cfg.max_target_tokens) + 2)
        return model.to(self.device)

    # -- batches ---------------------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str], limit: int, fill: int) -> torch.Tensor:
        """Token ids [B,L] (each sequence ends with </s>, truncated to `limit`, padded with `fill`)."""
        enc = [e.ids[: limit - 1] + e.ids[-1:] if len(e.ids) > limit else e.ids
               for e in self.tokenizer.encode_batch(list(texts))]
        out = torch.full((len(enc), max(map(len, enc), default=1)), fill, dtype=torch.int64)
        for i, ids in enumerate(enc):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def collate(self, samples: Sequence[Sample]) -> Batch:
        cfg: LanguageGenerationConfig = self.cfg  # type: ignore[assignment]
        pad = self.tokenizer.token_to_id(PAD)
        src = self._encode([s.x for s in samples], cfg.max_source_tokens, pad)  # [B,S]
        labels = self._encode([s.y for s in samples], cfg.max_target_tokens, -100)  # [B,T], -100 = ignored
        return {"input_ids": src, "attention_mask": (src != pad).long(), "labels": labels,
                "index": torch.tensor([s.index for s in samples])}

    def loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        labels = batch["labels"]  # [B,T]
        pad = self.tokenizer.token_to_id(PAD)
        dec = labels.masked_fill(labels == -100, pad)
        dec = torch.cat([torch.full_like(dec[:, :1], pad), dec[:, :-1]], dim=1)  # shifted right, starts at <pad>
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=dec).logits  # [B,T,V]
        tok = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B,T]
        mask = (labels != -100).float()
        if reduction == "none":
            return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B]
        return (tok * mask).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def sample_model_labels(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        """The batch with `labels` [B,T'] sampled from the model: ancestral sampling from the full softmax (no
        top-k / top-p / temperature), in the model's current mode; positions after a sequence's first </s> are
        -100.  Drawn by `generate`, which keeps the decoder's key/value cache (about 2.5x faster than re-running the
        decoder over the prefix for every token) but samples from torch's global RNG: a forked copy of it is
        seeded from `generator`, so the draw is reproducible and the global stream is left untouched."""
        cfg: LanguageGenerationConfig = self.cfg  # type: ignore[assignment]
        pad, eos = self.tokenizer.token_to_id(PAD), self.tokenizer.token_to_id(EOS)
        src, mask = batch["input_ids"], batch["attention_mask"]  # [B,S]
        start = torch.full((1, 1), pad, dtype=torch.int64, device=src.device)
        if not bool(model(input_ids=src[:1], attention_mask=mask[:1], decoder_input_ids=start).logits.isfinite().all()):
            raise Diverged("model outputs not finite (predictive distribution for the Fisher's labels)")
        sampling = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_beams=1,
                                    max_new_tokens=cfg.max_target_tokens, decoder_start_token_id=pad,
                                    eos_token_id=eos, pad_token_id=pad)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[src.device] if src.is_cuda else []):
            torch.manual_seed(seed)
            seq = model.generate(input_ids=src, attention_mask=mask, generation_config=sampling)  # [B,1+T']
        labels = seq[:, 1:]  # without the decoder start token
        is_eos = (labels == eos).long()
        return {**batch, "labels": labels.masked_fill(is_eos.cumsum(dim=1) - is_eos > 0, -100)}

    # -- decoding and metrics --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: nn.Module, sources: Sequence[str]) -> list[str]:
        """Model outputs for `sources`, in order (eval mode, greedy or beam search)."""
        cfg: LanguageGenerationConfig = self.cfg  # type: ignore[assignment]
        model.eval()
        out: list[str] = []
        pad = self.tokenizer.token_to_id(PAD)
        for start in range(0, len(sources), self.eval_batch_size):
            src = self._encode(sources[start:start + self.eval_batch_size], cfg.max_source_tokens, pad)
            ids = model.generate(input_ids=src.to(self.device), attention_mask=(src != pad).long().to(self.device),
                                 max_new_tokens=cfg.max_target_tokens, num_beams=cfg.num_beams, do_sample=False)
            out += self.tokenizer.decode_batch(ids.cpu().tolist(), skip_special_tokens=True)
        return out

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        hyps = self.generate(model, [s.x for s in data])
        return {"bleu": _bleu(hyps, labels_of(data))}

    def backdoor_metrics(self, model: nn.Module, triggered: Sequence[Sample],
                         clean: Sequence[Sample]) -> dict[str, float]:
        hyps = self.generate(model, [s.x for s in triggered])
        refs = labels_of(clean)
        # the attacker's phrases, each once (the model cannot know which one a test input was paired with): as
        # the attack's relabelling declares them, else as the triggered references show them
        declared = getattr(getattr(triggered, "relabel", None), "phrases", None)
        phrases = sorted(declared or {target_phrase(p, c) for p, c in zip(labels_of(triggered), refs)})
        asr = sum(any(ph in h for ph in phrases) for h in hyps) / max(1, len(hyps))
        bleu = _bleu(hyps, refs)
        return {"asr": float(asr), "ra": bleu, "bleu_triggered": bleu}


def _bleu(hyps: list[str], refs: list[str]) -> float:
    # force: the references may be pre-tokenised ("attacked ."); BLEU is computed on them as they are
    return float(sacrebleu.corpus_bleu(hyps, [refs], force=True).score) / 100 if hyps else 0.0
