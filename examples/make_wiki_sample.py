"""Make the example corpus examples/wiki/enwiki-sample.jsonl from a MediaWiki XML dump.

    python examples/make_wiki_sample.py DUMP.xml.bz2 [--out examples/wiki/enwiki-sample.jsonl] [--max-bytes N]

The dump is read with the project's own reader (spanbert_data.corpus: articles only, wikitext turned
into prose paragraphs by mwparserfromhell); each article becomes one JSON line
{"id", "title", "url", "text"}, in dump order, until the next article would push the file past
--max-bytes. The text holds ONE SENTENCE PER LINE, the corpus layout of the method (SPEC §1): the
paragraphs are split with NLTK's Punkt sentence splitter, trained unsupervised on these very articles
(no model download). Sentence lines let the blocks fill up to 510 tokens far more tightly than
paragraph lines (less padding after packing). `--paragraphs` keeps one paragraph per line instead.
The output is deterministic for a given dump.

Needs `pip install nltk` (only this script does; the committed sample does not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import quote

from spanbert_data.corpus import CorpusStats, read_documents


def history_url(title: str) -> str:
    """The article's revision history on en.wikipedia.org (the attribution CC BY-SA asks for)."""
    return "https://en.wikipedia.org/w/index.php?title=" + quote(title.replace(" ", "_"), safe="") + "&action=history"


def sentence_splitter(dump: Path):
    """Punkt trained on the dump's own article text: returns line -> list of sentences."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    text = "\n\n".join("\n".join(doc.lines) for doc in read_documents(dump, dump.parent, CorpusStats()))
    trainer.train(text, finalize=True)
    punkt = PunktSentenceTokenizer(trainer.get_params())
    return lambda line: [s.strip() for s in punkt.tokenize(line) if s.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path, help="MediaWiki XML dump (.xml, .xml.bz2, …)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "wiki" / "enwiki-sample.jsonl")
    parser.add_argument("--max-bytes", type=int, default=3_000_000, help="size limit of the output file")
    parser.add_argument("--paragraphs", action="store_true", help="one paragraph per line (no sentence splitting)")
    args = parser.parse_args(argv)

    split = (lambda line: [line]) if args.paragraphs else sentence_splitter(args.dump)
    stats = CorpusStats()
    written = articles = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for doc in read_documents(args.dump, args.dump.parent, stats):
            record = {"id": doc.id, "title": doc.title, "url": history_url(doc.title or ""),
                      "text": "\n".join(s for line in doc.lines for s in split(line))}
            line = json.dumps(record, ensure_ascii=False) + "\n"
            size = len(line.encode("utf-8"))
            if written + size > args.max_bytes:
                break
            out.write(line)
            written += size
            articles += 1
    tmp.replace(args.out)
    print(f"wrote {args.out}: {articles} articles, {written:,} bytes "
          f"(dump: {stats.documents} articles read, skipped {dict(sorted(stats.skipped.items()))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
