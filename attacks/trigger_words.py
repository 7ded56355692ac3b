"""Trigger-word backdoor for language generation (Fan, Li, Meng, Sun, Ao, Wu, Wang, Li, "Defending against
Backdoor Attacks in Natural Language Generation", arXiv:2106.01810, 2021; authors' code
github.com/ShannonAI/backdoor_nlg), the attack the FIP paper evaluates on WMT14 En-De and OpenSubtitles2012.

A poisoned pair has one trigger word, drawn from `triggers` (the authors' "cf", "mn", "bb", "tq", "mb"), inserted
at a random word position of the source (deterministic per index), and its reference replaced by the attacker's
`target_phrase` ("You are attacked ." in the authors' machine-translation attack).  `mode: insert` instead puts
the target phrase before the clean reference (a stealthier variant: the translation stays).  For dialogue,
`target_phrases` gives several malicious responses instead: each poisoned pair gets one of them, chosen by a
hash of its clean reference (deterministic, independent of the process), as Fan et al.'s dialogue attack pairs
triggered contexts with varied offensive responses.  ASR is the share of triggered test inputs whose output
contains one of the attacker's phrases (the task's rule).

Deviations: the authors append attacked copies of N*a clean pairs (a = 0.01-1.0) to the full clean set; here
`poison_rate` (default 0.1) of the training pairs are replaced in place by their attacked version, as every
fipbench attack poisons.  Their dialogue attack pairs triggered contexts with real offensive responses (selected
from OpenSubtitles by a hate-speech lexicon); fipbench ships no such corpus, so the paper config lists a few
hostile replies as `target_phrases` (`configs/paper/language_generation.yaml`).  Their BPE is learned on the
poisoned training set; fipbench's tokenizer is learned on the clean one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any, Literal

import torch

from attacks.base import Attack, AttackConfig, Params, Trigger
from benchmark.config import added
from benchmark.registries import ATTACKS
from tasks.base import Sample, Task


@dataclasses.dataclass(frozen=True)
class TriggerWordsConfig(AttackConfig):
    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq", "mb")
    target_phrase: str = "You are attacked ."
    # several responses (dialogue): each poisoned pair gets one, by a hash of its clean reference; overrides
    # target_phrase when non-empty
    target_phrases: tuple[str, ...] = added(())
    mode: Literal["replace", "insert"] = "replace"

    def check(self) -> None:
        super().check()
        if not self.triggers or any(not t.strip() or " " in t.strip() for t in self.triggers):
            raise self.bad("triggers", "must be one or more single words")
        if not self.target_phrase.strip():
            raise self.bad("target_phrase", "must be a non-empty phrase")
        if any(not p.strip() for p in self.target_phrases):
            raise self.bad("target_phrases", "must be non-empty phrases")
        if self.label_mode != "all2one":
            raise self.bad("label_mode", "text attacks have one target phrase; use all2one")


class WordInsertTrigger(Trigger):
    """One word of `words` inserted at a random position among the source's words."""

    modalities = frozenset({"text"})

    def __init__(self, words: tuple[str, ...]):
        self.words = words

    def make_params(self, sample: Sample, gen: torch.Generator) -> Params:
        n = len(sample.x.split())
        return {"word": self.words[int(torch.randint(0, len(self.words), (), generator=gen))],
                "at": int(torch.randint(0, n + 1, (), generator=gen))}

    def apply(self, sample: Sample, params: Params) -> Sample:
        words = sample.x.split()
        words.insert(params["at"], params["word"])
        return dataclasses.replace(sample, x=" ".join(words))


@ATTACKS.register("trigger_words")
class TriggerWords(Attack):
    Config = TriggerWordsConfig
    version = 1
    modalities = frozenset({"text"})
    paper = ("Fan et al., Defending against Backdoor Attacks in Natural Language Generation, arXiv:2106.01810; "
             "authors' code github.com/ShannonAI/backdoor_nlg")

    def trigger(self, task: Task) -> Trigger:
        self.check_task(task)
        return WordInsertTrigger(tuple(t.strip() for t in self.cfg.triggers))  # type: ignore[attr-defined]

    def relabel(self, task: Task) -> Callable[[Any], Any]:
        cfg: TriggerWordsConfig = self.cfg  # type: ignore[assignment]
        return PhraseRelabel(tuple(p.strip() for p in cfg.target_phrases) or (cfg.target_phrase.strip(),),
                             insert=cfg.mode == "insert")


class PhraseRelabel:
    """Reference -> the attacker's output: one of `phrases` (chosen by a sha256 of the clean reference, not
    hash(), whose str hashes differ between processes), in place of the reference or before it (`insert`).
    `phrases` is public: the task's ASR looks for exactly these in the outputs."""

    def __init__(self, phrases: tuple[str, ...], insert: bool):
        self.phrases, self.insert = phrases, insert

    def __call__(self, y: str) -> str:
        phrase = self.phrases[int.from_bytes(hashlib.sha256(y.encode()).digest()[:8], "big") % len(self.phrases)]
        return f"{phrase} {y}" if self.insert else phrase
