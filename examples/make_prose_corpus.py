"""Make an English prose corpus of tens of MB from documentation that Debian and PyPI packages ship.

    python examples/make_prose_corpus.py --out prose-corpus/ [--cache DIR] [--max-mb N]

The bundled Wikipedia sample (examples/wiki, 2.6 MB) is memorised by even a tiny model long before the
model learns anything that carries over to held-out text; `bench/pretrain_quality.py` and anyone who
wants to see learning on CPU need more real English. Nothing here may come from the internet at run time,
so the text comes from packages, fetched with their ordinary clients into `--cache` (once):

- English Wikipedia, May 2016 excerpt (105 articles): the `gensim==4.4.0` wheel (pip); article prose, one
  paragraph per line. CC BY-SA 4.0, by the Wikipedia authors (each article's history lists them).
- The Python 3.11 documentation: `python3.11-doc` (apt). PSF License 2.
- The Linux kernel 6.1 documentation, English pages only: `linux-doc-6.1` (apt). GPL-2.0.
- The PostgreSQL 15 manual: `postgresql-doc-15` (apt). PostgreSQL Licence.
- The Django 3.2 documentation: `python-django-doc` (apt). BSD-3-Clause.
- The Debian Administrator's Handbook, en-US: `debian-handbook` (apt). GPL-2.0+ or CC BY-SA 3.0.

Each HTML page becomes one document: the text of its `<p>` elements (prose; code listings, tables,
navigation and indices are not paragraphs), one paragraph per line. A paragraph is kept when it looks like
English prose: at least 8 words, mostly letters, few code characters, and not seen before (boilerplate
such as copyright footers repeats on every page and is dropped after its first occurrence). Sources are
read in the order of that list, pages in sorted path order, and sources are interleaved page by page
(round-robin), so any prefix of the corpus (`--max-mb`) mixes every source; the output is deterministic.

The corpus is written as JSON Lines (`{"id", "source", "text"}`, one page per line), the format
`spanbert-data build --corpus` reads. It is NOT committed to the repository: run this script to make it
(it is the corpus of bench/pretrain_quality.py, which runs it itself). Needs `apt-get` and `dpkg-deb`
(Debian or Ubuntu) for the Debian packages; a source whose package cannot be fetched is skipped with a
warning, and the sources that were used (with the package files, whose names carry the versions: a Debian
update changes the text a little) are listed in `SOURCES.json` beside the corpus.
"""

from __future__ import annotations

import argparse
import bz2
import html
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

GENSIM_WHEEL = "gensim==4.4.0"
GENSIM_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # Debian package name, or the pip requirement for the Wikipedia excerpt
    root: str  # folder inside the package holding the pages
    exclude: tuple[str, ...]  # path fragments (relative to root) to leave out
    licence: str
    title: str


SOURCES = (
    Source("wikipedia", GENSIM_WHEEL, "", (), "CC BY-SA 4.0",
           "English Wikipedia (May 2016 excerpt shipped by gensim 4.4.0)"),
    Source("python-docs", "python3.11-doc", "usr/share/doc/python3.11/html",
           ("_sources/", "genindex", "py-modindex", "search.html", "contents.html"), "PSF-2.0",
           "The Python 3.11 documentation"),
    Source("linux-docs", "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html",
           ("translations/", "_sources/", "genindex", "search.html"), "GPL-2.0",
           "The Linux kernel 6.1 documentation"),
    Source("postgresql-docs", "postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html",
           ("bookindex", "release-"), "PostgreSQL", "The PostgreSQL 15 manual"),
    Source("django-docs", "python-django-doc", "usr/share/doc/python-django-doc/html",
           ("_sources/", "genindex", "py-modindex", "search.html", "releases/"), "BSD-3-Clause",
           "The Django 3.2 documentation"),
    Source("debian-handbook", "debian-handbook", "usr/share/doc/debian-handbook/html/en-US",
           ("Common_Content/",), "GPL-2.0+ or CC BY-SA 3.0", "The Debian Administrator's Handbook (en-US)"),
)  # fmt: skip

MIN_WORDS = 8
CODE_CHARS = set("{}[]()<>=;_$#\\/|*`@")


class ParagraphParser(HTMLParser):
    """Collects the text of every <p> and <div class="para"> (nested markup flattened; <pre>, tables skipped)."""

    SKIP = {"pre", "script", "style", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._depth_p = 0  # > 0 inside a paragraph (the nesting depth of its <div>s for a DocBook para)
        self._tag = "p"
        self._skip = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "p" or (tag == "div" and "para" in (dict(attrs).get("class") or "").split()):
            if self._depth_p:  # malformed nesting: close the open paragraph first
                self._flush()
            self._depth_p, self._tag = 1, tag
        elif tag == "div" and self._depth_p and self._tag == "div":
            self._depth_p += 1  # a div nested in a DocBook para (<div class="para">, Publican's HTML)
        elif tag == "br" and self._depth_p:
            self._buf.append(" ")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == self._tag and self._depth_p:
            self._depth_p -= 1
            if self._depth_p == 0 or tag == "p":
                self._flush()

    def handle_data(self, data):
        if self._depth_p and not self._skip:
            self._buf.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        if text:
            self.paragraphs.append(text)
        self._buf, self._depth_p = [], 0


def looks_like_prose(text: str) -> bool:
    """English prose, not code or a list of identifiers: enough words, mostly letters, few code characters."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return False
    letters = sum(c.isalpha() for c in text)
    code = sum(c in CODE_CHARS for c in text)
    ascii_share = sum(c.isascii() for c in text) / len(text)
    return letters >= 0.7 * len(text.replace(" ", "")) and code <= 0.03 * len(text) and ascii_share > 0.97


def html_documents(root: Path, source: Source):
    """(relative path, paragraphs) of every HTML page under root, in sorted path order."""
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if any(x in rel for x in source.exclude):
            continue
        parser = ParagraphParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        yield rel, parser.paragraphs


def wikipedia_documents(dump: Path):
    """(title, paragraphs) of the articles of the gensim excerpt, read with the project's MediaWiki reader."""
    from spanbert_data.corpus import CorpusStats, read_documents

    for doc in read_documents(dump, dump.parent, CorpusStats()):
        yield doc.title or str(doc.id), [" ".join(line.split()) for line in doc.lines]


def fetch_deb(package: str, cache: Path) -> Path | None:
    """The package's files unpacked under cache/PACKAGE (apt-get download + dpkg-deb -x, once)."""
    target = cache / package
    if (target / ".complete").exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print(f"warning: {package}: needs apt-get and dpkg-deb (Debian/Ubuntu); source skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode or not debs:
            reason = (got.stderr.strip().splitlines() or ["no .deb"])[-1]
            print(f"warning: {package}: apt-get download failed ({reason}); source skipped "
                  "(try `apt-get update` first)", file=sys.stderr)  # fmt: skip
            return None
        if target.exists():
            shutil.rmtree(target)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target)], check=True)
    (target / ".complete").write_text(debs[0].name + "\n")
    return target


def fetch_wikipedia(cache: Path) -> Path | None:
    """The MediaWiki dump excerpt inside the gensim wheel (pip download --no-deps, once)."""
    dump = cache / "gensim" / Path(GENSIM_DUMP).name
    if dump.exists():
        return dump
    dump.parent.mkdir(parents=True, exist_ok=True)
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                          "-d", str(dump.parent), GENSIM_WHEEL], capture_output=True, text=True)  # fmt: skip
    wheels = sorted(dump.parent.glob("gensim-*.whl"))
    if got.returncode or not wheels:
        reason = (got.stderr.strip().splitlines() or ["no wheel"])[-1]
        print(f"warning: {GENSIM_WHEEL}: pip download failed ({reason}); source skipped", file=sys.stderr)
        return None
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(GENSIM_DUMP)
    bz2.decompress(data)  # fail here, not later, on a damaged download
    tmp = dump.with_name(dump.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dump)
    return dump


def source_documents(source: Source, cache: Path):
    """(doc id, paragraphs) of one source, or nothing when its package cannot be had."""
    if source.name == "wikipedia":
        dump = fetch_wikipedia(cache)
        if dump is not None:
            for title, paragraphs in wikipedia_documents(dump):
                yield f"{source.name}/{title}", paragraphs
        return
    unpacked = fetch_deb(source.package, cache)
    if unpacked is None:
        return
    for rel, paragraphs in html_documents(unpacked / source.root, source):
        yield f"{source.name}/{rel}", paragraphs


def tagged(source: Source, cache: Path):
    for doc in source_documents(source, cache):
        yield source, doc


def fetched_file(source: Source, cache: Path) -> str | None:
    """The package file a source was read from (its name carries the version; Debian updates change it)."""
    if source.name == "wikipedia":
        wheels = sorted((cache / "gensim").glob("gensim-*.whl"))
        return wheels[0].name if wheels else None
    marker = cache / source.package / ".complete"
    return marker.read_text().strip() if marker.is_file() else None


def interleave(iterators):
    """Round-robin over the iterators until all are exhausted (deterministic)."""
    active = list(iterators)
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write corpus.jsonl and SOURCES.json into")
    parser.add_argument("--cache", type=Path, default=None, help="where fetched packages are kept [OUT/../.cache]")
    parser.add_argument("--max-mb", type=float, default=0, help="stop after this many MB of text (0 = everything)")
    args = parser.parse_args(argv)
    cache = (args.cache or args.out.parent / ".prose-cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    seen: set[str] = set()
    counts = {s.name: {"documents": 0, "paragraphs": 0, "bytes": 0} for s in SOURCES}
    limit = int(args.max_mb * 1e6) if args.max_mb else None
    written = 0
    tmp = args.out / "corpus.jsonl.tmp"
    streams = [tagged(s, cache) for s in SOURCES]
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for source, (doc_id, paragraphs) in interleave(streams):
            keep = []
            for p in paragraphs:
                p = html.unescape(p)
                if p in seen or not looks_like_prose(p):
                    continue
                seen.add(p)
                keep.append(p)
            if not keep:
                continue
            line = json.dumps({"id": doc_id, "source": source.name, "text": "\n".join(keep)}, ensure_ascii=False)
            size = len(line.encode()) + 1
            if limit is not None and written + size > limit:
                break
            out.write(line + "\n")
            written += size
            c = counts[source.name]
            c["documents"] += 1
            c["paragraphs"] += len(keep)
            c["bytes"] += size
    tmp.replace(args.out / "corpus.jsonl")
    used = [{"name": s.name, "title": s.title, "package": s.package, "file": fetched_file(s, cache),
             "licence": s.licence, **counts[s.name]} for s in SOURCES if counts[s.name]["documents"]]  # fmt: skip
    (args.out / "SOURCES.json").write_text(json.dumps({"bytes": written, "sources": used}, indent=1) + "\n")
    for u in used:
        print(f"{u['name']:16} {u['documents']:6} pages {u['paragraphs']:8} paragraphs {u['bytes'] / 1e6:8.1f} MB "
              f"({u['licence']})", file=sys.stderr)  # fmt: skip
    print(f"wrote {args.out / 'corpus.jsonl'}: {written / 1e6:.1f} MB", file=sys.stderr)
    return 0 if used else 1


if __name__ == "__main__":
    sys.exit(main())
