"""The WMT14 en-de and OpenSubtitles2012 loaders on tiny fixtures in their on-disk formats: aligned plain-text
files (train.en/.de, newstest2014.* or test.*) and OPUS's one-line-per-subtitle text, plain and gzipped.  Split
sizes, alignment, the empty / length filter, max_pairs, test-file precedence, dialogue pairing, the 5 % test
cut, the registry, and one-line errors for missing, misaligned and non-UTF-8 files.  Runs in well under a second."""

from __future__ import annotations

import gzip

import pytest

from _helpers import one_line_error
from benchmark.registries import DATASETS
from tasks.language_generation import real_data
from tasks.language_generation.data import TextData
from tasks.language_generation.real_data import load_opensubtitles2012, load_wmt14_en_de


pytestmark = pytest.mark.usefixtures("no_env_root")  # loaders must not see a real $FIPBENCH_DATA


def write(path, lines, end: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(end.join(lines).encode() + end.encode())


# -- WMT14 en-de ---------------------------------------------------------------------------------------------
EN = [f"english sentence {i}" for i in range(6)]
DE = [f"deutscher satz {i} ä" for i in range(6)]


def write_wmt(root, test: str = "newstest2014"):
    d = root / "wmt14_en_de"
    write(d / "train.en", EN)
    write(d / "train.de", DE)
    write(d / f"{test}.en", ["the test", "a second test"])
    write(d / f"{test}.de", ["der test", "ein zweiter test"])
    return d


def test_wmt_splits_alignment_and_registry(tmp_path, monkeypatch):
    write_wmt(tmp_path)
    d = load_wmt14_en_de(tmp_path)
    assert isinstance(d, TextData) and d.name == "wmt14_en_de"
    assert d.src_train == EN and d.tgt_train == DE  # pair i = line i of both files
    assert d.src_test == ["the test", "a second test"] and d.tgt_test == ["der test", "ein zweiter test"]
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    loader = DATASETS.get("wmt14_en_de")
    assert loader is load_wmt14_en_de and loader.task == "language_generation"
    assert loader().src_train == EN


def test_wmt_filter_strip_and_max_pairs(tmp_path):
    d = tmp_path / "wmt14_en_de"
    long = " ".join(["w"] * 5)
    # CRLF, a BOM, padding, a "\r" and U+2028 inside a sentence (must not split it), an empty side, a long side
    en = ["\ufeffone", "  two  ", "", "three", long, "four\rfour", "five\u2028five", "six"]
    de = ["eins", "zwei", "leer", "   ", "lang", "vier", "fünf", long + " w"]
    write(d / "train.en", en, end="\r\n")
    write(d / "train.de", de, end="\r\n")
    write(d / "newstest2014.en", ["a b c d e f", "ok"])
    write(d / "newstest2014.de", ["x", "ok"])
    out = load_wmt14_en_de(tmp_path, max_words=5)
    assert out.src_train == ["one", "two", long, "four\rfour", "five\u2028five"]
    assert out.tgt_train == ["eins", "zwei", "lang", "vier", "fünf"]
    # the length filter cleans training data only: the official test set is kept whole, as papers score it
    assert out.src_test == ["a b c d e f", "ok"] and out.tgt_test == ["x", "ok"]
    capped = load_wmt14_en_de(tmp_path, max_words=5, max_pairs=2)
    assert capped.src_train == ["one", "two"] and capped.tgt_train == ["eins", "zwei"]
    assert capped.src_test == ["a b c d e f", "ok"]  # max_pairs caps training only


def test_wmt_test_file_precedence(tmp_path):
    d = write_wmt(tmp_path, test="test")  # only test.*: the fallback
    assert load_wmt14_en_de(tmp_path).src_test == ["the test", "a second test"]
    write(d / "newstest2014.en", ["news"])
    write(d / "newstest2014.de", ["nachrichten"])
    out = load_wmt14_en_de(tmp_path)  # newstest2014 wins when both exist
    assert out.src_test == ["news"] and out.tgt_test == ["nachrichten"]


def test_wmt_errors(tmp_path):
    one_line_error(load_wmt14_en_de, match="no data root given.*wmt14_en_de/train.en")
    one_line_error(load_wmt14_en_de, tmp_path / "nope", match="is not a directory")
    one_line_error(load_wmt14_en_de, tmp_path, match=r"wmt14_en_de is not a directory.*newstest2014.*FIPBENCH_DATA")
    d = write_wmt(tmp_path)
    (d / "newstest2014.de").unlink()
    one_line_error(load_wmt14_en_de, tmp_path, match=r"newstest2014.de not found.*--data-root")
    write(d / "newstest2014.de", ["der test", "ein zweiter test"])
    write(d / "train.de", DE[:-1])
    one_line_error(load_wmt14_en_de, tmp_path, match=r"train.en has 6 lines but .*train.de has 5; .*aligned")
    (d / "train.de").write_bytes(b"ok\n" * 5 + b"bad \xff byte")  # 6 lines, the last not UTF-8
    one_line_error(load_wmt14_en_de, tmp_path, match=r"train.de is malformed \(line 6 is not valid UTF-8")
    write(d / "train.de", [""] * 6)
    one_line_error(load_wmt14_en_de, tmp_path, match=r"train.en is malformed \(no pair of train.en/.de")
    one_line_error(load_wmt14_en_de, tmp_path, max_pairs=0, match="max_pairs must be a positive integer or None")
    one_line_error(load_wmt14_en_de, tmp_path, max_words=True, match="max_words must be a positive integer, got")


# -- OpenSubtitles2012 ---------------------------------------------------------------------------------------
def subtitle_lines(n: int) -> list[str]:
    return [f"line {i}" for i in range(n)]


def test_opensubtitles_pairs_and_test_cut(tmp_path, monkeypatch):
    write(tmp_path / "opensubtitles2012" / "OpenSubtitles2012.en", subtitle_lines(81))  # 40 pairs + a spare line
    d = load_opensubtitles2012(tmp_path)
    assert d.name == "opensubtitles2012" and len(d.src_train) == 38 and len(d.src_test) == 2  # 5 % of 40
    assert d.src_train[:2] == ["line 0", "line 2"] and d.tgt_train[:2] == ["line 1", "line 3"]
    assert d.src_test == ["line 76", "line 78"] and d.tgt_test == ["line 77", "line 79"]  # the tail; 80 unused
    small = load_opensubtitles2012(tmp_path, max_pairs=10)  # cap first, then cut: 9 train + 1 test
    assert small.src_train == [f"line {2 * i}" for i in range(9)] and small.src_test == ["line 18"]
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    loader = DATASETS.get("opensubtitles2012")
    assert loader is load_opensubtitles2012 and loader.task == "language_generation"
    assert loader(max_pairs=2).src_test == ["line 2"]  # at least one test pair


def test_opensubtitles_gzip_filter_and_precedence(tmp_path):
    d = tmp_path / "opensubtitles2012"
    d.mkdir()
    lines = ["Hello .", "Hi !", "", "dropped response", "a b c d", "too long", "Where ?", " Here . ", "x", "y"]
    with gzip.open(d / "OpenSubtitles2012.en.gz", "wb") as f:
        f.write("\n".join(lines).encode())  # no final newline: the last line still counts
    out = load_opensubtitles2012(tmp_path, max_words=3)
    # pairs (0,1) (2,3) (4,5) (6,7) (8,9): empty context and 4-word context dropped, pairing not shifted
    assert out.src_train + out.src_test == ["Hello .", "Where ?", "x"]
    assert out.tgt_train + out.tgt_test == ["Hi !", "Here .", "y"]
    assert out.src_test == ["x"]
    write(d / "OpenSubtitles2012.en", subtitle_lines(4))  # the plain file wins over the .gz
    assert load_opensubtitles2012(tmp_path).src_train == ["line 0"]


def test_opensubtitles_errors(tmp_path):
    one_line_error(load_opensubtitles2012, match="no data root given.*OpenSubtitles2012.en")
    one_line_error(load_opensubtitles2012, tmp_path, match="opensubtitles2012 is not a directory.*FIPBENCH_DATA")
    d = tmp_path / "opensubtitles2012"
    d.mkdir()
    one_line_error(load_opensubtitles2012, tmp_path, match=r"OpenSubtitles2012.en not found.*\.en\.gz.*--data-root")
    write(d / "OpenSubtitles2012.en", ["only", "one pair"])
    one_line_error(load_opensubtitles2012, tmp_path, match=r"malformed \(1 context/response pairs .* need 2")
    (d / "OpenSubtitles2012.en").write_bytes(b"fine\n\xc3\x28\n")
    one_line_error(load_opensubtitles2012, tmp_path, match=r"OpenSubtitles2012.en is malformed \(line 2 is not valid")
    (d / "OpenSubtitles2012.en").unlink()
    (d / "OpenSubtitles2012.en.gz").write_bytes(gzip.compress(b"a\nb\nc\nd\n")[:-12])  # truncated archive
    one_line_error(load_opensubtitles2012, tmp_path, match=r"OpenSubtitles2012.en.gz is malformed \(EOFError")


def test_module_registers_both():
    assert {"wmt14_en_de", "opensubtitles2012"} <= set(DATASETS.names())
    assert real_data.TEST_FRACTION == 0.05
