"""Language-generation datasets: `TextData` (parallel source / target strings) and the embedded generated
`toy_mt` corpus.

A sample is a pair of strings: `Sample.x` the source (an English sentence, a dialogue context), `Sample.y` the
reference output (its translation, the response).  Splits hold them as plain lists.

`toy_mt` (the embedded default): a small English-like grammar translated into an invented language by a fixed
lexicon and three rules a model has to learn, so that BLEU measures real translation:

- word order: subject - object - verb (the verb moves to the end), and adjectives follow their noun;
- agreement: the determiner's form depends on the noun's gender (a fixed property of each noun) and on
  definiteness ("the" / "a");
- an optional prepositional phrase ("with the old key") is translated in place, after the object.

Lexicon: 24 nouns, 12 adjectives, 12 verbs, 4 prepositions; target words are invented, deterministic
pseudo-words.  6,000 training and 500 test pairs, 5-12 source words each, deterministic (the corpus is a property
of the dataset; `split_seed` only fixes the defense holdout).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from benchmark.registries import DATASETS
from benchmark.rng import generator


@dataclasses.dataclass(frozen=True)
class TextData:
    """A dataset's official train/test split as parallel lists of strings."""

    src_train: list[str]
    tgt_train: list[str]
    src_test: list[str]
    tgt_test: list[str]
    name: str = ""


NOUNS = ("dog", "cat", "bird", "horse", "child", "teacher", "farmer", "doctor", "king", "queen", "boy", "girl",
         "house", "car", "book", "tree", "river", "letter", "apple", "city", "ship", "song", "garden", "window")
ADJECTIVES = ("big", "small", "red", "old", "young", "happy", "dark", "quiet", "green", "strong", "cold", "tall")
VERBS = ("sees", "likes", "finds", "takes", "paints", "follows", "helps", "visits", "writes", "buys", "hears",
         "carries")
PREPOSITIONS = ("with", "near", "behind", "under")
_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "pe", "du", "ri", "ma", "zo", "fe", "gu", "la", "ko",
              "ni", "bu", "xe")


def _lexicon() -> dict[str, str]:
    """English word -> invented target word (two or three syllables, all distinct), fixed forever."""
    g = generator(0, "toy_mt", "lexicon")
    words = NOUNS + ADJECTIVES + VERBS + PREPOSITIONS
    out: dict[str, str] = {}
    used: set[str] = set()
    for w in words:
        while True:
            n = 2 + int(torch.randint(0, 2, (), generator=g))
            t = "".join(_SYLLABLES[int(i)] for i in torch.randint(0, len(_SYLLABLES), (n,), generator=g))
            if t not in used:
                used.add(t)
                out[w] = t
                break
    return out


LEXICON = _lexicon()
GENDER = {n: i % 3 for i, n in enumerate(NOUNS)}  # 0, 1, 2: three genders, as German's
DETERMINERS = {("the", 0): "der", ("the", 1): "die", ("the", 2): "das", ("a", 0): "ein", ("a", 1): "eine",
               ("a", 2): "ein"}


def _pick(options: tuple[str, ...], g: torch.Generator) -> str:
    return options[int(torch.randint(0, len(options), (), generator=g))]


def _noun_phrase(g: torch.Generator) -> tuple[list[str], list[str]]:
    """(English words, target words) of 'det [adj] noun'."""
    det, noun = _pick(("the", "a"), g), _pick(NOUNS, g)
    adj = _pick(ADJECTIVES, g) if float(torch.rand((), generator=g)) < 0.5 else None
    src = [det] + ([adj] if adj else []) + [noun]
    tgt = [DETERMINERS[det, GENDER[noun]], LEXICON[noun]] + ([LEXICON[adj]] if adj else [])  # adjective after
    return src, tgt


def make_pair(g: torch.Generator) -> tuple[str, str]:
    """One (English, target) sentence pair: S V O [P NP] -> S O [P NP] V."""
    s_src, s_tgt = _noun_phrase(g)
    o_src, o_tgt = _noun_phrase(g)
    verb = _pick(VERBS, g)
    src, tgt = s_src + [verb] + o_src, s_tgt + o_tgt
    if float(torch.rand((), generator=g)) < 0.4:
        prep = _pick(PREPOSITIONS, g)
        p_src, p_tgt = _noun_phrase(g)
        src += [prep] + p_src
        tgt += [LEXICON[prep]] + p_tgt
    return " ".join(src), " ".join(tgt + [LEXICON[verb]])


def generate_pairs(n: int, g: torch.Generator) -> tuple[list[str], list[str]]:
    pairs = [make_pair(g) for _ in range(n)]
    return [s for s, _ in pairs], [t for _, t in pairs]


@DATASETS.register("toy_mt")
def load_toy_mt(root: Path | None = None, split_seed: int = 0) -> TextData:
    """The generated translation corpus: 6,000 train / 500 test pairs."""
    src_tr, tgt_tr = generate_pairs(6000, generator(0, "toy_mt", "train"))
    src_te, tgt_te = generate_pairs(500, generator(0, "toy_mt", "test"))
    return TextData(src_tr, tgt_tr, src_te, tgt_te, name="toy_mt")


load_toy_mt.task = "language_generation"  # type: ignore[attr-defined]
