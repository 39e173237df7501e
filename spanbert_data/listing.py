"""What `--corpus` names: the files of a corpus, in a fixed order, wherever they are (docs/FORMAT.md, "Input units").

`list_corpus(entries, ...)` takes the `--corpus` values in the order given; each is

- a local file or directory (walked recursively: `list_corpus_files`, which skips hidden names, symlink loops and
  what is not a regular file, counting each);
- a glob pattern (`wiki/*/train-*.parquet`; `*` and `?` within one path component, `**` across any number of
  them), matched below its longest directory without wildcards;
- a URL (`s3://`, `gs://`, `hf://datasets/...`, any fsspec URL, optionally with a glob), listed through its
  `Location` in one listing with sizes, never downloaded.

Within an entry the files come in sorted path order, except a `datasets` folder, whose order is its own. A folder
is recognised by its content, never by its name alone:

- `Dataset.save_to_disk`: `state.json` lists the Arrow files (`_data_files`) in row order; only those are read;
- `DatasetDict.save_to_disk`: `dataset_dict.json` lists the splits, one such folder each; `--split` picks one;
- a Hub dataset as `huggingface-cli download` or `snapshot_download` leave it: a `README.md` whose YAML front
  matter has `configs:` or `dataset_info:` (the dataset card, not read as text); when its files name splits as the
  Hub does (`train-00000-of-00004.parquet`, `data/test/...`), only those of `--split` are read.

The result is an `inputs.Corpus` (the entries' bases, for the tasks) and the `InputFile`s in order.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path

from spanbert_data.corpus import (
    CorpusStats,
    Document,
    describe_skipped,
    print_to_stderr,
    read_documents,
    require_documents,
)
from spanbert_data.errors import CorpusError
from spanbert_data.inputs import Corpus, InputFile
from spanbert_data.location import Location, is_url

_WILDCARD = re.compile(r"[*?\[]")
_CARD = re.compile(rb"\A---\r?\n(?:(?!---).*\r?\n)*?(?:configs|dataset_info):")  # a dataset card's YAML front matter
# How the Hub tells splits apart by name (its data_files conventions): a word of the file name, or a directory.
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}  # fmt: skip
_WORD_SEPARATORS = re.compile(r"[-._ 0-9]+")


def list_corpus(entries, storage_options: dict | None = None, split: str = "train", text_field: str = "text",
                stats: CorpusStats | None = None, warn: Callable[[str], None] = print_to_stderr,
                ) -> tuple[Corpus, list[InputFile]]:  # fmt: skip
    """The corpus of `entries` (paths, globs, URLs; see the module docstring) and its files in order. CorpusError
    naming the entry when one cannot be listed, holds no file, or has no split `split`."""
    stats = stats if stats is not None else CorpusStats()
    entries = [entries] if isinstance(entries, (str, os.PathLike)) else list(entries)
    if not entries:
        raise CorpusError("no corpus given")
    bases, named, split_used = [], [], False
    for root, entry in enumerate(entries):
        base, files, used = _list_entry(str(entry), storage_options, split, stats, warn)
        bases.append(base)
        named += [(root, name, size) for name, size in files]
        split_used |= used
    if split != "train" and not split_used:
        raise CorpusError(f"--split {split}: {', '.join(map(str, entries))} has no splits (--split chooses one of a "
                          "DatasetDict folder or of a Hub dataset folder)")  # fmt: skip
    corpus = Corpus(bases, storage_options, text_field, label=", ".join(map(str, entries)))
    return corpus, [corpus.file(root, name, size) for root, name, size in named]


def _list_entry(entry: str, storage_options, split: str, stats: CorpusStats,
                warn) -> tuple[str, list[tuple[str, int]], bool]:  # fmt: skip
    """(base, [(name, size)], whether --split chose among splits) of one --corpus value."""
    if is_url(entry):
        base, pattern = _split_pattern(entry) if _WILDCARD.search(entry) else (entry, "")
        location = Location.of(base, storage_options)
        names = _visible(_matching(location.listing(), pattern), stats)
        if not names and not pattern and "/" in entry.split("://", 1)[1].strip("/"):
            parent, name = entry.rstrip("/").rsplit("/", 1)  # a URL naming one object: listed under its parent
            size = Location.of(parent, storage_options).size(name)
            if size is not None:
                return parent, [(name, size)], False
        if not names:
            raise CorpusError(f"{entry}: no objects there; check the URL (and --storage-options)")
    else:
        path, pattern = Path(entry), ""
        if not path.exists() and _WILDCARD.search(entry):
            base, pattern = _split_pattern(entry)
            path = Path(base)
        path = path.absolute()  # a task on another machine (or in another directory) finds it at the same path
        # (a pattern's walk counts nothing: what it skipped below the fixed directory may not match anyway)
        files = list_corpus_files(path, CorpusStats() if pattern else stats, (lambda m: None) if pattern else warn)
        if path.is_file():
            return str(path.parent), [(path.name, _size(files[0]))], False
        location = Location.of(path)
        names = _matching({p.relative_to(path).as_posix(): _size(p) for p in files}, pattern)
    if pattern:
        if not names:
            raise CorpusError(f"{entry}: no file matches {pattern!r} under {location}")
        return location.url, list(names.items()), False
    files, used = _layout(location, names, split, warn, stats)
    return location.url, files, used


def _matching(names: dict[str, int], pattern: str) -> dict[str, int]:
    if not pattern:
        return names
    parts = pattern.split("/")
    return {n: s for n, s in names.items() if _matches(n.split("/"), parts)}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the reader names it and counts it


def _visible(names: dict[str, int], stats: CorpusStats) -> dict[str, int]:
    """Objects whose path has no component starting with "." (counted ``hidden``, as in a local directory)."""
    shown = {n: s for n, s in names.items() if not any(p.startswith(".") for p in n.split("/"))}
    if len(shown) < len(names):
        stats.skip("hidden", len(names) - len(shown))
    return shown


def _split_pattern(entry: str) -> tuple[str, str]:
    """(the longest leading directory without wildcards, the pattern below it)."""
    scheme, sep, rest = entry.partition("://") if is_url(entry) else ("", "", entry)
    parts = rest.split("/")
    first = next(i for i, p in enumerate(parts) if _WILDCARD.search(p))
    base = "/".join(parts[:first]) or ("/" if rest.startswith("/") else ".")
    return f"{scheme}{sep}{base}", "/".join(parts[first:])


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Path components against pattern components: fnmatch within one, `**` for any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[k:], pattern[1:]) for k in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


# ------------------------------------------------------------------------------------------ datasets folders
def _layout(location: Location, names: dict[str, int], split: str, warn,
            stats: CorpusStats) -> tuple[list[tuple[str, int]], bool]:  # fmt: skip
    """The files of a directory to read, in order, as its layout says (module docstring)."""
    if "dataset_dict.json" in names:
        info = location.read_json("dataset_dict.json") or {}
        splits = info.get("splits")
        if isinstance(splits, list):
            if split not in splits:
                raise CorpusError(f"{location / 'dataset_dict.json'}: a DatasetDict of the splits "
                                  f"{', '.join(map(str, splits))}, none named {split!r}; choose one with --split")
            saved = _saved_dataset(location, f"{split}/", names, warn, stats)
            if saved is None:
                raise CorpusError(f"{location / split}: split {split!r} of the DatasetDict has no state.json "
                                  "(not a complete save_to_disk folder)")  # fmt: skip
            return saved, True
    saved = _saved_dataset(location, "", names, warn, stats)
    if saved is not None:
        return saved, False
    card = location.read_bytes("README.md") if "README.md" in names else None
    if card is None or not _CARD.match(card[:1 << 16]):
        return list(names.items()), False
    data = {n: s for n, s in names.items() if n != "README.md"}
    by_split = {n: _split_of(n) for n in data}
    if not any(by_split.values()):
        return list(data.items()), split == "train"  # no split named: the Hub reads every file as "train"
    chosen = [(n, s) for n, s in data.items() if by_split[n] == split]
    if not chosen:
        found = ", ".join(sorted({s for s in by_split.values() if s}))
        raise CorpusError(f"{location}: a Hub dataset with the splits {found}, none named {split!r}; choose one "
                          "with --split")  # fmt: skip
    return chosen, True


def _saved_dataset(location: Location, prefix: str, names: dict[str, int], warn,
                   stats: CorpusStats) -> list[tuple[str, int]] | None:  # fmt: skip
    """The Arrow files of a `save_to_disk` folder in the order of its state.json, or None when it is not one."""
    if f"{prefix}state.json" not in names:
        return None
    state = location.read_json(f"{prefix}state.json") or {}
    listed = state.get("_data_files")
    if not isinstance(listed, list) or not all(isinstance(f, dict) and "filename" in f for f in listed):
        return None
    files = []
    for entry in listed:
        name = posixpath.normpath(f"{prefix}{entry['filename']}")
        if name in names:
            files.append((name, names[name]))
        else:
            warn(f"{name}: listed in {prefix}state.json but missing; skipped")
            stats.skip("unreadable")
    return files


def _split_of(name: str) -> str | None:
    """The split a Hub dataset's file belongs to by its name (a word of the file name first, then a directory)."""
    *dirs, file = name.split("/")
    for words in ([w for w in _WORD_SEPARATORS.split(file.lower()) if w], [d.lower() for d in reversed(dirs)]):
        for word in words:
            for split, keywords in SPLIT_WORDS.items():
                if word in keywords:
                    return split
    return None


# ------------------------------------------------------------------------------------------ local directories
def list_corpus_files(root: str | Path, stats: CorpusStats | None = None,
                      warn: Callable[[str], None] = print_to_stderr) -> list[Path]:
    """All regular files under `root` (or `[root]` if it is a file), sorted by relative posix path.

    Symlinks to files and directories are followed; a symlink that leads back to one of its own
    ancestor directories (or to itself) is a loop: skipped, warned, counted as ``symlink_loop``.
    Entries whose name starts with "." (``.git``, ``.DS_Store``) are not read (counted ``hidden``).
    Dangling symlinks, FIFOs, sockets and devices are counted ``unreadable``. Raises `CorpusError`
    when `root` does not exist or holds no file to read.
    """
    stats = stats if stats is not None else CorpusStats()
    root = Path(root)
    try:
        root_stat = root.stat()
    except OSError as exc:
        why = "symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise CorpusError(f"corpus path {root} cannot be read: {why}") from None
    if stat.S_ISREG(root_stat.st_mode):
        return [root]
    if not stat.S_ISDIR(root_stat.st_mode):
        raise CorpusError(f"corpus path {root} is neither a regular file nor a directory")

    found: list[tuple[str, Path]] = []
    pending = [(root, "", frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while pending:  # depth-first; the order does not matter, the result is sorted below
        directory, rel_dir, ancestors = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            warn(f"{rel_dir or directory}: directory cannot be listed ({exc.strerror}); skipped")
            stats.skip("unreadable")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith("."):
                stats.skip("hidden")
                continue
            try:
                st = os.stat(entry.path)  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    warn(f"{rel}: symlink loop; skipped")
                    stats.skip("symlink_loop")
                else:
                    warn(f"{rel}: cannot be read ({'dangling symlink' if entry.is_symlink() else exc.strerror})"
                         "; skipped")
                    stats.skip("unreadable")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    warn(f"{rel}: symlink loop (leads back to a parent directory); skipped")
                    stats.skip("symlink_loop")
                else:
                    pending.append((Path(entry.path), rel, ancestors | {key}))
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, Path(entry.path)))
            else:
                warn(f"{rel}: not a regular file (FIFO, socket or device); skipped")
                stats.skip("unreadable")
    if not found:
        raise CorpusError(f"no readable files under {root}: {describe_skipped(stats)}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def read_corpus(root: str | Path, stats: CorpusStats | None = None,
                warn: Callable[[str], None] = print_to_stderr) -> Iterator[Document]:
    """Every document of a corpus (`list_corpus` of one entry), in order; `CorpusError` if there is none."""
    stats = stats if stats is not None else CorpusStats()
    corpus, files = list_corpus([root], stats=stats, warn=warn)
    for file in files:
        yield from read_documents(file, None, stats, warn, corpus.text_field)
    require_documents(root, stats)
