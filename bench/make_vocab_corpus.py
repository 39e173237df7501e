"""Make a larger real-English corpus for bench/vocab.py from Debian documentation packages (offline).

    python -m bench.make_vocab_corpus [--out /tmp/spanbert-vocab-corpus] [--packages python3.11-doc perl-doc]

Downloads the packages with `apt-get download` (run `apt-get update` once first; no install, no root
needed for the download itself), unpacks them with `dpkg-deb -x`, and copies their plain-text
documentation into OUT: the reStructuredText sources of the Python manual (`*.rst.txt`, ~12 MB) and
Perl's POD manual pages (`*.pod`, ~9 MB), plus the bundled Wikipedia sample (examples/wiki). About
23 MB of technical and encyclopaedic English prose, read as plain text by the corpus reader. Nothing
is committed: the bench points at OUT. The texts keep their licences (Python: PSF; Perl: Artistic/GPL;
Wikipedia: CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".rst.txt", ".pod")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "spanbert-vocab-corpus")
    parser.add_argument("--packages", nargs="+", default=["python3.11-doc", "perl-doc"])
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} already exists and is not empty; remove it or choose another --out", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for package in args.packages:
            done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"apt-get download {package} failed (run apt-get update first?): {done.stderr.strip()}",
                      file=sys.stderr)  # fmt: skip
                return 1
        for deb in sorted(Path(tmp).glob("*.deb")):
            unpacked = Path(tmp) / deb.stem
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
            name = deb.name.split("_")[0]
            files = sorted(p for p in unpacked.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            for path in files:
                rel = path.relative_to(unpacked).as_posix().replace("/", "__")
                dest = args.out / name / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            print(f"{name}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
    wiki = args.out / "wiki"
    wiki.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "examples" / "wiki" / "enwiki-sample.jsonl", wiki / "enwiki-sample.jsonl")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"corpus ready: {args.out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
