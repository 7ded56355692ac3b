"""Real language-generation datasets (WMT14 English -> German, OpenSubtitles2012 dialogue), read from local
plain-text files.

Nothing is downloaded.  Every loader takes `root` (the CLI's --data-root, else $FIPBENCH_DATA) and raises a
one-line FipbenchError naming the expected files when they are missing or malformed (the image-classification
helpers, hence the same messages).  A sample is a (source, target) pair of strings (`TextData`).

Reading.  Files are UTF-8 (a leading BOM is dropped) and split on "\\n" only, as `wc -l` and `paste` count
lines: a stray "\\r" or U+2028 inside a sentence (web-crawled text has both) must not shift the
alignment.  Each line is stripped of surrounding whitespace; the text is otherwise kept as is (no tokenisation).

Filter.  A pair is dropped when either side is empty after stripping, or has more than `max_words`
whitespace-separated words -- the usual length cleaning of training data (Moses' clean-corpus-n, as fairseq's
prepare-wmt14en2de.sh does).  WMT14's test set (newstest2014) is only cleared of empty pairs, never of long ones,
so BLEU is taken on the whole official test set as in papers (sources longer than the model's
`max_source_tokens` are truncated by the task).  opensubtitles2012 has no official test set: its pairs are
filtered before the split.  `max_pairs` keeps only the first N training pairs that pass the filter (the file is
read no further), for quick runs.  Both are set in a matrix as `task_config: {max_pairs: N, max_words: N}`.

- wmt14_en_de: <root>/wmt14_en_de/train.en + train.de (training) and newstest2014.en + newstest2014.de (test;
  test.en + test.de are used only when newstest2014.en is absent), line i of one file the translation of line i
  of the other (fairseq's prepare-wmt14en2de.sh names; its test.* are newstest2014).  Text is read as is, raw or
  Moses-tokenised alike; BPE'd files would reach the model as BPE pieces.  The official split, so `split_seed`
  is unused; `max_pairs` caps training pairs only.  The full set is ~4.5M pairs, held as Python
  strings: about 1-2 GB of memory.  Two files of a pair with different line counts are an error.
- opensubtitles2012: <root>/opensubtitles2012/OpenSubtitles2012.en (OPUS's monolingual plain text, one subtitle
  line per line), else OpenSubtitles2012.en.gz (read with gzip).  Dialogue pairs are non-overlapping consecutive
  lines (line i the context, line i+1 the response, i = 0, 2, 4, ...; an odd last line is unused), so no line is
  both a context and a response nor in both splits; a dropped pair does not shift the pairing.
  There is no official split: the last 5 % of the (filtered, `max_pairs`-capped) pairs, at least one, are the
  test set and the rest train -- deterministic, `split_seed` unused.  The file is very large: use `max_pairs`.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from tasks.image_classification.real_data import FIX, _malformed, _missing, _root
from tasks.language_generation.data import TextData

WMT, OS = "wmt14_en_de", "opensubtitles2012"
WMT_EXPECTED = ("{root}/wmt14_en_de/train.en, train.de, newstest2014.en and newstest2014.de (or test.en, test.de): "
                "UTF-8 text, one sentence per line, aligned by line")
OS_EXPECTED = ("{root}/opensubtitles2012/OpenSubtitles2012.en or OpenSubtitles2012.en.gz (OPUS OpenSubtitles v2012 "
               "monolingual English plain text, one subtitle line per line)")
TEST_FRACTION = 0.05  # opensubtitles2012's held-out tail


def _lines(name: str, path: Path, expected: str, root: Path, opener: Callable = open) -> Iterator[str]:
    """The stripped lines of a UTF-8 file, split on b"\\n" only (see the module docstring), read lazily."""
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _malformed(name, path, f"line {n} is not valid UTF-8: {err.reason} at byte {err.start}",
                                     expected, root) from None
                yield (line.lstrip("\ufeff") if n == 1 else line).strip()  # strip() also takes CRLF's "\r"
    except (OSError, EOFError, zlib.error) as err:  # unreadable file, truncated or corrupt gzip
        raise _malformed(name, path, f"{type(err).__name__}: {err}", expected, root) from None


def _count_lines(path: Path, root: Path) -> int:
    """Lines as `_lines` yields them (a last line without "\\n" counts), without decoding: ~1 s per GB."""
    n, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n, last = n + chunk.count(b"\n"), chunk[-1:]
    except OSError as err:
        raise _malformed(WMT, path, f"{type(err).__name__}: {err}", WMT_EXPECTED, root) from None
    return n + (last != b"\n")


def _keep(pairs, max_words: int | None, max_pairs: int | None) -> tuple[list[str], list[str]]:
    """The pairs with both sides non-empty and at most `max_words` words (None: any length), the first
    `max_pairs` of them."""
    src, tgt = [], []
    for s, t in pairs:
        if max_pairs is not None and len(src) >= max_pairs:
            break  # stop reading: a capped run need not decode a multi-GB file
        if s and t and (max_words is None or (len(s.split()) <= max_words and len(t.split()) <= max_words)):
            src.append(s)
            tgt.append(t)
    return src, tgt


def _check_args(name: str, max_pairs: int | None, max_words: int) -> None:
    for arg, v in (("max_words", max_words), ("max_pairs", max_pairs)):
        if (v is not None or arg == "max_words") and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise FipbenchError(f"dataset {name}: {arg} must be a positive integer"
                                f"{' or None' if arg == 'max_pairs' else ''}, got {v!r}; set task_config.{arg}")


def _dir(name: str, root: Path, expected: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise FipbenchError(f"dataset {name}: {folder} is not a directory; expected {expected.format(root=root)}; "
                            f"{FIX}")
    return folder


def _aligned(folder: Path, stem: str, root: Path, max_words: int | None,
             max_pairs: int | None) -> tuple[list, list]:
    """The filtered pairs of <stem>.en / <stem>.de, after checking the two files have as many lines."""
    paths = [folder / f"{stem}.{lang}" for lang in ("en", "de")]
    for p in paths:
        if not p.is_file():
            raise _missing(WMT, p, WMT_EXPECTED, root)
    counts = [_count_lines(p, root) for p in paths]
    if counts[0] != counts[1]:
        raise FipbenchError(f"dataset {WMT}: {paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}; "
                            f"the two files must be aligned line by line; expected {WMT_EXPECTED.format(root=root)}")
    src, tgt = _keep(zip(*(_lines(WMT, p, WMT_EXPECTED, root) for p in paths)), max_words, max_pairs)
    if not src:
        limit = f" with at most {max_words} words" if max_words is not None else ""
        raise _malformed(WMT, paths[0], f"no pair of {stem}.en/.de is non-empty{limit}", WMT_EXPECTED, root)
    return src, tgt


@DATASETS.register(WMT)
def load_wmt14_en_de(root: Path | None = None, split_seed: int = 0, *, max_pairs: int | None = None,
                     max_words: int = 64) -> TextData:
    """WMT14 English -> German: train.en/.de (~4.5M pairs; pairs filtered by `max_words`, the first `max_pairs`
    kept) and newstest2014 (all 3,003 pairs; else test.en/.de).  `split_seed` is unused."""
    _check_args(WMT, max_pairs, max_words)
    root = _root(root, WMT, WMT_EXPECTED)
    folder = _dir(WMT, root, WMT_EXPECTED)
    test = "newstest2014" if (folder / "newstest2014.en").is_file() or not (folder / "test.en").is_file() else "test"
    src_tr, tgt_tr = _aligned(folder, "train", root, max_words, max_pairs)
    src_te, tgt_te = _aligned(folder, test, root, None, None)  # the whole official test set
    return TextData(src_tr, tgt_tr, src_te, tgt_te, name=WMT)


@DATASETS.register(OS)
def load_opensubtitles2012(root: Path | None = None, split_seed: int = 0, *, max_pairs: int | None = None,
                           max_words: int = 64) -> TextData:
    """OpenSubtitles2012 (English) dialogue: (context, response) = lines (2k, 2k+1), filtered by `max_words`,
    the first `max_pairs` kept; the last 5 % (at least 1) are the test split.  `split_seed` is unused."""
    _check_args(OS, max_pairs, max_words)
    root = _root(root, OS, OS_EXPECTED)
    folder = _dir(OS, root, OS_EXPECTED)
    plain, packed = folder / "OpenSubtitles2012.en", folder / "OpenSubtitles2012.en.gz"
    if plain.is_file():
        lines = _lines(OS, plain, OS_EXPECTED, root)
    elif packed.is_file():
        lines = _lines(OS, packed, OS_EXPECTED, root, opener=gzip.open)
    else:
        raise _missing(OS, plain, OS_EXPECTED, root)
    src, tgt = _keep(zip(lines, lines), max_words, max_pairs)  # one iterator twice: (0, 1), (2, 3), ...
    if len(src) < 2:
        raise _malformed(OS, plain if plain.is_file() else packed, f"{len(src)} context/response pairs are non-empty "
                         f"with at most {max_words} words; need 2 (train and test)", OS_EXPECTED, root)
    cut = len(src) - max(1, int(len(src) * TEST_FRACTION))
    return TextData(src[:cut], tgt[:cut], src[cut:], tgt[cut:], name=OS)


load_wmt14_en_de.task = "language_generation"  # type: ignore[attr-defined]
load_opensubtitles2012.task = "language_generation"  # type: ignore[attr-defined]
