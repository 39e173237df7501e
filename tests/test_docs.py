"""Every citation of the project's own docs resolves (issue 20).

Code and docs cite the method as `SPEC §N` (docs/SPEC.md), the architecture as `DESIGN §N` (docs/DESIGN.md),
other docs as `docs/NAME.md`, `docs/NAME.md §N` or `docs/NAME.md, "Heading"`, and link them from Markdown as
`[text](docs/NAME.md#anchor)`. A citation is only useful if a reader who follows it finds what it names: this
scans every tracked .py, .md, .sh, .toml file and Makefile and lists each citation whose file, numbered
section, heading or anchor does not exist.

Rules (a section is a Markdown heading that starts with `§N` or `N.`, as in `## §2 Span masking` or
`## 6. The GPU check`):
- `SPEC §N`, `DESIGN §N`, `docs/NAME.md §N`, with lists and ranges (`§2–§3`, `§3-4`, `§2/§3`, `§2, §3`):
  every section named exists in docs/SPEC.md, docs/DESIGN.md or docs/NAME.md;
- `docs/NAME.md` anywhere: the file exists; `docs/NAME.md, "Heading"` and `README, "Heading"`: a heading of
  that file starts with the quoted text;
- a bare `SPEC.md` / `DESIGN.md` (write `docs/SPEC.md`, or `SPEC §N`) or a bare `SPEC` / `DESIGN` without a
  section names nothing a reader can open;
- in a Markdown file, a bare `§N` is a section of that same file, and a relative link `[x](path#anchor)` must
  reach an existing file and, for Markdown targets, a GitHub anchor of one of its headings.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".sh", ".toml"}
NAMES = {"Makefile"}
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}
SELF = "tests/test_docs.py"  # its docstring shows citation forms as examples, not as citations
ALIASES = {"SPEC": "docs/SPEC.md", "DESIGN": "docs/DESIGN.md"}

_NUM = r"\d+(?:\.\d+)?[a-z]?"
# A list of sections: §2, §2–§3, §3-4, §2/§3, §2, §3 (a bare number only after a range dash).
_SECTIONS = rf"§\s?{_NUM}(?:\s*[–-]\s*§?\s?{_NUM}|\s*(?:/|,|and)\s*§\s?{_NUM})*"
QUALIFIED = re.compile(rf"(?<![\w/.-])(?:(?P<alias>SPEC|DESIGN)|(?P<doc>docs/[\w.-]+\.md))\s+(?P<sections>{_SECTIONS})")
DOC_FILE = re.compile(r"(?<![\w.-])(docs/[\w.-]+\.md)")
QUOTED_HEADING = re.compile(
    r"(?<![\w.-])(?P<file>docs/[\w.-]+\.md|README(?:\.md)?)(?:,\s*|\s+)\"(?P<heading>[^\"\n]+)\""
)
BARE_FILE = re.compile(r"(?<![\w/.(-])(SPEC|DESIGN)\.md")
BARE_WORD = re.compile(r"\b(SPEC|DESIGN)\b(?!\.md)(?!\s?§)")
BARE_SECTION = re.compile(rf"§\s?({_NUM})")
MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HEADING_NUMBER = re.compile(rf"^(?:§\s?)?({_NUM})(?:\.|\s|$)")


def scanned_files(root: Path) -> list[Path]:
    """Files under version control (tracked, or new and not ignored); a plain walk where git is unavailable."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=30).stdout.decode()  # fmt: skip
        rels = [r for r in out.split("\0") if r]
    except (OSError, subprocess.SubprocessError):
        rels = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    files = []
    for rel in sorted(set(rels)):
        parts = Path(rel).parts
        if rel == SELF or any(p in SKIP_DIRS for p in parts) or rel.startswith("bench/results/"):
            continue
        path = root / rel
        if (path.suffix in SUFFIXES or path.name in NAMES) and path.is_file():
            files.append(path)
    return files


def _plain(text: str) -> str:
    """Heading text as rendered: links reduced to their text, emphasis and code marks dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[`*_]{1,3}(?=\S)|(?<=\S)[`*_]{1,3}", "", text).strip()


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation (§, `, (, ., :) dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


class Doc:
    """The headings of one Markdown file: numbered sections, heading texts and GitHub anchors."""

    def __init__(self, path: Path):
        self.sections: set[str] = set()
        self.headings: list[str] = []
        self.anchors: set[str] = set()
        seen: dict[str, int] = {}
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            m = None if fenced else HEADING.match(line)
            if m is None:
                continue
            text = _plain(m.group(2))
            number = HEADING_NUMBER.match(text)
            if number:
                self.sections.add(number.group(1))
                text_without_number = text[number.end():].strip()
            else:
                text_without_number = text
            self.headings.append(text_without_number.lower())
            slug = github_slug(text)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            self.anchors.add(slug if n == 0 else f"{slug}-{n}")

    def has_heading(self, prefix: str) -> bool:
        return any(h.startswith(prefix.lower().strip()) for h in self.headings)


def _section_list(text: str) -> list[str]:
    """'§2–§3' → ['2', '3']; '§3-4' → ['3', '4']; '§1–§5' → ['1' … '5']; '§2/§3' → ['2', '3']."""
    names: list[str] = []
    for m in re.finditer(rf"([–-]\s*)?§?\s?({_NUM})", text):
        if m.group(1) and names and names[-1].isdigit() and m.group(2).isdigit():
            names += [str(i) for i in range(int(names[-1]) + 1, int(m.group(2)) + 1)]
        else:
            names.append(m.group(2))
    return names


class Checker:
    """Checks the lines of one repository tree; parses each cited Markdown file once."""

    def __init__(self, root: Path):
        self.root = root
        self._docs: dict[Path, Doc | None] = {}
        self.problems: list[str] = []

    def doc(self, path: Path) -> Doc | None:
        path = path.resolve()
        if path not in self._docs:
            self._docs[path] = Doc(path) if path.is_file() else None
        return self._docs[path]

    def citations(self, where: str, line: str) -> list[tuple[int, int]]:
        """Section citations, docs/ files and quoted headings, anywhere; returns the spans of section citations."""
        covered = []
        for m in QUALIFIED.finditer(line):
            covered.append(m.span())
            target = ALIASES.get(m.group("alias")) or m.group("doc")
            d = self.doc(self.root / target)
            missing = [s for s in _section_list(m.group("sections")) if d is not None and s not in d.sections]
            if d is None:
                self.problems.append(f"{where}: {m.group(0)!r} → {target} does not exist")
            elif missing:
                self.problems.append(f"{where}: {m.group(0)!r} → no section "
                                     f"{', '.join('§' + s for s in missing)} in {target}")  # fmt: skip
        for m in DOC_FILE.finditer(line):
            if not (self.root / m.group(1)).is_file():
                self.problems.append(f"{where}: {m.group(1)!r} → the file does not exist")
        for m in QUOTED_HEADING.finditer(line):
            target = "README.md" if m.group("file").startswith("README") else m.group("file")
            d = self.doc(self.root / target)
            if d is not None and not d.has_heading(m.group("heading")):
                self.problems.append(f"{where}: {m.group(0)!r} → no heading starting {m.group('heading')!r} "
                                     f"in {target}")  # fmt: skip
        return covered

    def bare_names(self, where: str, line: str) -> None:
        """SPEC.md / DESIGN.md without docs/, and SPEC / DESIGN without a section."""
        for m in BARE_FILE.finditer(line):
            self.problems.append(f"{where}: {m.group(0)!r} → write docs/{m.group(0)} (or cite a section: "
                                 f"{m.group(1)} §N)")  # fmt: skip
        for m in BARE_WORD.finditer(line):
            self.problems.append(f"{where}: {m.group(0)!r} without a section → cite {m.group(0)} §N or "
                                 f"{ALIASES[m.group(1)]}")  # fmt: skip

    def markdown(self, where: str, line: str, path: Path, covered: list[tuple[int, int]]) -> None:
        """A Markdown file's bare §N (its own sections) and its relative links with anchors."""
        for m in BARE_SECTION.finditer(line):
            own = self.doc(path)
            if not any(a <= m.start() < b for a, b in covered) and own is not None and m.group(1) not in own.sections:
                self.problems.append(f"{where}: {m.group(0)!r} → no section §{m.group(1)} in this file")
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if "://" in target or target.startswith(("mailto:", "<")):
                continue
            file_part, _, anchor = target.partition("#")
            dest = path.parent / file_part if file_part else path
            if not dest.exists():
                self.problems.append(f"{where}: link {target!r} → {file_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in self.doc(dest).anchors:
                self.problems.append(f"{where}: link {target!r} → no heading with anchor #{anchor} in "
                                     f"{file_part or 'this file'}")  # fmt: skip

    def file(self, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        is_md = path.suffix == ".md"
        fenced = False
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            where = f"{rel}:{lineno}"
            if is_md and line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            covered = self.citations(where, line)
            if fenced:  # a command or a folder tree in a Markdown code block names files, it cites nothing
                continue
            self.bare_names(where, line)
            if is_md:
                self.markdown(where, line, path, covered)


def collect_problems(root: Path = ROOT) -> list[str]:
    """One line per citation that does not resolve: 'file:line: citation → what is missing'."""
    checker = Checker(root)
    for path in scanned_files(root):
        checker.file(path)
    return checker.problems


def test_every_citation_resolves():
    problems = collect_problems()
    assert not problems, "unresolved citations:\n" + "\n".join(problems)


def test_the_spec_and_design_sections_that_code_relies_on_exist():
    spec, design = Doc(ROOT / "docs/SPEC.md"), Doc(ROOT / "docs/DESIGN.md")
    assert {"1", "2", "3", "4", "5", "6"} <= spec.sections
    assert {str(i) for i in range(1, 10)} <= design.sections


def test_the_checker_reports_what_does_not_resolve(tmp_path):
    """On a small tree with one good and one bad citation of every form, exactly the bad ones are reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/SPEC.md").write_text("# The method\n## §1 Input blocks\n## §2 Span masking\n## §3 SBO\n")
    (tmp_path / "docs/DESIGN.md").write_text("# Architecture\n## §1 Halves\n```\n## 7. not a heading in code\n```\n")
    (tmp_path / "docs/FORMAT.md").write_text("# Format\n## Input units\n## Vocabulary (`tokenizer.json`)\n")
    (tmp_path / "README.md").write_text(
        "# r\n## Deviations from the paper\n"
        "ok: SPEC §1, SPEC §2–§3, DESIGN §1, docs/FORMAT.md, \"Input units\", README, \"Deviations\"\n"
        "ok: [v](docs/FORMAT.md#vocabulary-tokenizerjson) [s](docs/SPEC.md#2-span-masking)"
        " [r](#deviations-from-the-paper)\n"
        "bad: SPEC §9\n"
        "bad: SPEC §2–§4\n"
        "bad: DESIGN §7\n"
        "bad: docs/NOPE.md\n"
        "bad: docs/FORMAT.md, \"Shards\"\n"
        "bad: see SPEC.md\n"
        "bad: as the SPEC says\n"
        "bad: §5 of this file\n"
        "bad: [x](docs/SPEC.md#nope) [y](docs/GONE.md)\n"
    )
    (tmp_path / "mod.py").write_text('"""Blocks (SPEC §1); masks (SPEC §2/§3-shaped); (DESIGN §1, SPEC §3-4)."""\n')
    problems = collect_problems(tmp_path)
    reported = sorted({p.split(": ", 1)[0] for p in problems})
    assert reported == sorted([f"README.md:{i}" for i in range(5, 14)] + ["mod.py:1"]), problems
    assert "mod.py:1: 'SPEC §3-4' → no section §4 in docs/SPEC.md" in problems
    text = "\n".join(problems)
    for expected in ("§9", "§2–§4", "'DESIGN §7'", "docs/NOPE.md", "'Shards'", "write docs/SPEC.md",
                     "'SPEC' without", "§5 in this file", "#nope", "GONE.md"):
        assert expected in text, (expected, problems)
