"""Bad corpora, bad tokenizers, a foreign --out and a full disk, end to end through the `spanbert-data` process.

A bad FILE among good ones is skipped with one warning line naming it and counted in the manifest; a corpus
with nothing usable, a bad tokenizer, a foreign --out or a failed write is refused: exit status 2, one
`error:` line naming the path, no traceback, and nothing half-written under a final name.
(tests/data/test_corpus.py proves the readers' behaviour on each input at the unit level.)
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import resource
from pathlib import Path

import pytest
import zstandard
from tokenizers import Tokenizer, models

from tests.faults.helpers import DATA_CLI, EXAMPLE, VOCAB, assert_clean_error, run, split_corpus
from tests.faults.test_build_kills import assert_nothing_partial

SMALL = ["--tokenizer", VOCAB, "--max-seq-len", "128"]
GOOD_TEXT = "The quick brown fox jumps over the lazy dog.\nIt was not amused by this at all.\n\n" * 40


def build(corpus: Path, out: Path, *extra, **kw):
    return run([*DATA_CLI, "build", "--corpus", corpus, "--out", out, *SMALL, *extra], **kw)


def warnings_naming(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:") and name in line]


def _truncated(compress) -> bytes:
    """Real, poorly compressible text (30 articles of the example corpus), cut at 2/3 of its compressed bytes."""
    data = compress(b"".join(EXAMPLE.read_bytes().splitlines(keepends=True)[:30]))
    return data[: len(data) * 2 // 3]


# name -> (bytes of the bad file, the manifest's skip reason or None, what its warning says)
BAD_FILES = {
    "binary.bin": (bytes(range(256)) * 64, "binary", "looks binary"),
    "empty.txt": (b"", "empty", "empty"),
    "invalid-utf8.txt": (b"Caf\xe9 au lait is a drink.\nAnother \xff\xfe line of text.\n", None, "replaced"),
    "nul-bytes.txt": (b"Some text with a NUL\x00 byte inside it.\n" * 3, None, "replaced"),
    "cut.gz": (_truncated(gzip.compress), "truncated", "truncated"),
    "cut.bz2": (_truncated(lambda b: bz2.compress(b, 1)), "truncated", "truncated"),  # 100 kB blocks: some whole
    "cut.xz": (_truncated(lzma.compress), "truncated", "truncated"),
    "cut.zst": (_truncated(zstandard.ZstdCompressor().compress), "truncated", "truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_among_good_ones_is_skipped_named_and_counted(name, tmp_path):
    data, reason, says = BAD_FILES[name]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text(GOOD_TEXT)
    (corpus / name).write_bytes(data)
    done = build(corpus, tmp_path / "out")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    warned = warnings_naming(done.stderr, name)
    assert len(warned) == 1 and says in warned[0], done.stderr
    stats = json.loads((tmp_path / "out" / "manifest.json").read_text())["corpus"]
    if reason is None:  # decoded with U+FFFD in place of each bad byte (NUL is a control character: replaced)
        assert stats["replaced_chars"] > 0 and stats["skipped"] == {}
    else:
        assert stats["skipped"] == {reason: 1}
    if name.startswith("cut."):  # what decoded cleanly before the cut is kept
        assert stats["documents"] > 40


def test_symlink_loops_and_unreadable_entries_are_skipped(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "good.txt").write_text(GOOD_TEXT)
    os.symlink(corpus, corpus / "sub" / "back-to-root")  # a directory loop
    os.symlink(corpus / "self-loop", corpus / "self-loop")  # ELOOP
    os.symlink(corpus / "nowhere", corpus / "dangling")
    os.mkfifo(corpus / "a-fifo")  # reading it would block forever
    # A file whose read fails even for root: /proc/self/mem has no mapping at offset 0 (EIO).
    os.symlink("/proc/self/mem", corpus / "unreadable.txt")
    done = build(corpus, tmp_path / "out")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for name in ("sub/back-to-root", "self-loop", "dangling", "a-fifo", "unreadable.txt"):
        assert warnings_naming(done.stderr, name), f"no warning names {name}:\n{done.stderr}"
    stats = json.loads((tmp_path / "out" / "manifest.json").read_text())["corpus"]
    assert stats["skipped"]["symlink_loop"] == 2 and stats["skipped"]["unreadable"] == 3
    assert stats["documents"] == 40


def test_twenty_megabyte_single_line_builds(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the cat sat on a mat and then it ran away to the big house "  # 15 words, 15 WordPiece tokens
    (corpus / "one-line.txt").write_text(words * (20_000_000 // len(words)))  # 20 MB, no newline at all
    done = build(corpus, tmp_path / "out", "--valid-fraction", "0")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokens"] == 15 * (20_000_000 // len(words))  # every word kept
    assert run([*DATA_CLI, "verify", tmp_path / "out"]).returncode == 0


@pytest.mark.parametrize("option, value, says", [
    ("--mask-ratio", "2", "masking.mask_ratio must be in (0, 1], got 2.0"),
    ("--geometric-p", "0", "masking.geometric_p must be in (0, 1], got 0.0"),
    ("--max-span-words", "0", "masking.max_span_words must be an integer >= 1, got 0"),
])  # fmt: skip
def test_bad_masking_option_is_one_line_and_writes_nothing(option, value, says, tmp_path):
    """A masking option out of range is refused before anything is read or written (no traceback)."""
    out = tmp_path / "out"
    done = build(tmp_path, out, option, value)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("Error:")] == [f"Error: {says}"]
    assert not out.exists()


def test_missing_empty_and_unusable_corpus_are_refused(tmp_path):
    assert_clean_error(build(tmp_path / "missing", tmp_path / "o1"), str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert_clean_error(build(tmp_path / "empty", tmp_path / "o2"), "no readable files", str(tmp_path / "empty"))
    junk = tmp_path / "junk"
    junk.mkdir()
    for name, (data, reason, _) in BAD_FILES.items():
        if reason is not None and name != "cut.gz":  # a truncated stream may still hold a readable document
            (junk / name).write_bytes(data if not name.startswith("cut.") else data[:20])
    os.symlink(junk / "loop", junk / "loop")
    line = assert_clean_error(build(junk, tmp_path / "o3"), str(junk))
    assert "binary: 1" in line and "empty: 1" in line and "symlink_loop: 1" in line


@pytest.mark.parametrize(
    "content, says",
    [
        (bytes(range(256)) * 8, "binary file, not a tokenizer"),
        (b"", "empty file"),
        (b'{"model": {"type": "WordLevel", "vocab": {}, "unk_token": "x"}}', "model is 'WordLevel'; pass a"),
        (Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).to_str().encode(), "no CLS ([CLS] or <s>), SEP"),
        (b'{"not": "a tokenizer"}', "without a tokenizer 'model'"),
        (b'{"model": ', "invalid JSON"),
        (b"Dear diary,\ntoday I wrote a README instead of a vocabulary.\n", "not a BERT vocab.txt"),
    ],
    ids=["binary", "empty", "word-level", "bpe-without-specials", "other-json", "torn-json", "prose"],
)
def test_file_that_is_not_a_tokenizer_is_refused(content, says, tmp_path):
    corpus = split_corpus(EXAMPLE, tmp_path / "corpus", pieces=1)
    fake = tmp_path / "tokenizer.json"
    fake.write_bytes(content)
    result = run([*DATA_CLI, "build", "--corpus", corpus, "--out", tmp_path / "out", "--tokenizer", fake])
    assert_clean_error(result, str(fake), says)


def test_out_dir_with_unrelated_files_is_refused_and_untouched(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text(GOOD_TEXT)
    out = tmp_path / "thesis"
    (out / "figures").mkdir(parents=True)
    (out / "thesis.tex").write_text("precious")
    (out / "figures" / "plot.png").write_bytes(b"\x89PNG")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert_clean_error(build(corpus, out), str(out), "not empty")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.rglob("*")) == ["figures", "plot.png", "thesis.tex"]
    (out / "build.json").write_text('{"format": "something else"}')
    assert_clean_error(build(corpus, out), str(out / "build.json"), "not a spanbert build file")
    assert (out / "thesis.tex").read_text() == "precious"


def _file_size_limit(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize(
    "where, options, failing",
    [
        ("tokenizer", [], "tokenizer.json"),  # the first sizeable file written (466 KB)
        ("store", ["--unit-mb", "64"], "store/part-00000-00000-000.arrow"),  # one unit: a ~1 MB store part
        ("shard", ["--unit-mb", "0.25"], "epoch-0/part-00000.arrow"),  # small store parts, one ~1.3 MB shard
    ],
)
def test_full_disk_is_a_clean_error_and_the_build_resumes(where, options, failing, tmp_path):
    corpus = split_corpus(EXAMPLE, tmp_path / "corpus", pieces=6)
    out = tmp_path / "out"
    limit = 100_000 if where == "tokenizer" else 600_000
    full = build(corpus, out, *options, preexec_fn=_file_size_limit(limit))
    assert_clean_error(full, f"could not write {out / failing}", "File too large")
    assert_nothing_partial(out)
    assert not list(out.rglob("*.tmp")), "the failed write's temp file was left behind"
    assert not (out / "manifest.json").exists()
    done = build(corpus, out, *options)  # space is back: the same command finishes the build
    assert done.returncode == 0, done.stderr[-3000:]
    assert run([*DATA_CLI, "verify", out]).returncode == 0


def test_dataset_files_are_readable_like_any_file_the_user_writes(tmp_path):
    """Temp files are created 0600; what is renamed into place must follow the umask (shared datasets)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text(GOOD_TEXT)
    done = build(corpus, tmp_path / "out", preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*")
             if p.is_file()}  # fmt: skip
    assert set(modes.values()) == {0o644}, modes
