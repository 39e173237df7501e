"""MediaWiki XML dumps: stream the pages, keep articles, turn wikitext into clean prose lines.

Two pieces, both free of any corpus bookkeeping (`corpus.py` does the counting):

- `iter_pages(stream)` streams `<page>` elements with `xml.etree.ElementTree.iterparse`, matching tags
  by local name so that every export schema version (`export-0.10`, `0.11`, …) works, and clears
  what it has read so that memory stays flat on a 20 GB dump.
- `wikitext_to_lines(text)` parses the wikitext with mwparserfromhell and renders its node tree.
  Like BERT's Wikipedia data (Devlin et al. 2019, §3.1: "we extract only the text passages and
  ignore lists, tables, and headers"), it keeps prose paragraphs only: templates, references,
  tables, lists, headings, File:/Image:/Category: and interlanguage links, math and galleries go;
  link labels and a few inline templates that carry words (``{{lang|…}}``, ``{{convert|…}}``,
  dates) are kept as their text. Sections that are lists of sources (References, External links,
  See also, …) are dropped whole.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode


@dataclass
class Page:
    """One `<page>` of a dump (the text of its last revision)."""

    title: str
    ns: int
    id: str | None
    redirect: bool
    text: str


def _local(tag: str) -> str:
    """`{http://www.mediawiki.org/xml/export-0.10/}page` -> `page`: namespace-agnostic matching."""
    return tag.rsplit("}", 1)[-1]


def iter_pages(stream: BinaryIO) -> Iterator[Page]:
    """Yield the pages of a MediaWiki XML export read from a binary stream.

    Raises `xml.etree.ElementTree.ParseError` on malformed XML, after yielding every page that
    ended before the error.
    """
    root = None
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if event == "start":
            if root is None:
                root = elem
            continue
        if _local(elem.tag) != "page":
            continue
        title, ns, page_id, redirect, text = "", 0, None, False, ""
        for child in elem:
            name = _local(child.tag)
            if name == "title":
                title = child.text or ""
            elif name == "ns":
                ns = int((child.text or "0").strip() or 0)
            elif name == "id" and page_id is None:
                page_id = (child.text or "").strip() or None
            elif name == "redirect":
                redirect = True
            elif name == "revision":  # full-history dumps: the last revision wins
                for field in child:
                    if _local(field.tag) == "text":
                        text = field.text or ""
        # Old dumps have no <redirect/> element, only the magic word.
        redirect = redirect or text.lstrip()[:9].upper() == "#REDIRECT"
        yield Page(title=title, ns=ns, id=page_id, redirect=redirect, text=text)
        # Drop everything read so far: the root would otherwise keep every (emptied) page alive.
        elem.clear()
        if root is not None:
            root.clear()


# --- wikitext -> prose ----------------------------------------------------------------------------

# Tags whose content is not running prose (or not text at all).
_DROP_TAGS = frozenset(
    """ref references gallery math chem ce score timeline imagemap syntaxhighlight source pre table
    templatestyles includeonly graph mapframe maplink hiero inputbox categorytree indicator
    charinsert langconvert""".split()
)
# Sections that list sources or links rather than say something (compared lower-cased).
_JUNK_SECTIONS = frozenset({
    "references", "external links", "see also", "further reading", "notes", "footnotes", "bibliography",
    "sources", "citations", "notes and references", "references and notes", "works cited", "literature",
    "gallery", "selected bibliography", "external sources", "primary sources", "secondary sources",
})
_MEDIA_PREFIXES = frozenset({"file", "image", "media", "category"})
# An interlanguage/interwiki prefix such as "de", "zh-min-nan", "simple" (links without a label).
_INTERWIKI = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})*$|^simple$")
_MONTHS = "January February March April May June July August September October November December".split()

_LIST = "\ue000"  # marks a rendered line as a list item (private-use code point, never in output)
_LIST_MARKUP = frozenset("*#;:")

# Small clean-ups of the rendered text (not markup removal: the parser did that).
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_EMPTY_PARENS = re.compile(r"\s*\([\s,;:.–-]*\)")


def wikitext_to_lines(wikitext: str) -> list[str]:
    """Render one article's wikitext as a list of clean prose paragraphs (one per line)."""
    # skip_style_tags: one unbalanced '' or ''' (common) would otherwise make the parser give up on
    # the rest of the paragraph and leave its refs and links as raw text; _tidy drops the quote marks.
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    out: list[str] = []
    skip_level = 0  # > 0 while inside a junk section of that heading level
    for node in code.nodes:
        if isinstance(node, Heading):
            if skip_level and node.level <= skip_level:
                skip_level = 0
            if not skip_level and node.title.strip_code().strip().lower() in _JUNK_SECTIONS:
                skip_level = node.level
            out.append("\n")  # headings themselves are dropped (see module docstring)
        elif not skip_level:
            out.append(_render(node))
    lines = []
    for raw in "".join(out).split("\n"):
        if raw.lstrip().startswith(_LIST):
            continue
        line = _tidy(raw)
        if line and not line.startswith(("{|", "|", "!")) and any(c.isalnum() for c in line):
            lines.append(line)
    return lines


def _tidy(raw: str) -> str:
    line = " ".join(raw.replace(_LIST, " ").split())  # also turns NBSP and tabs into one space
    line = _MAGIC_WORD.sub("", line).replace("'''", "").replace("''", "")  # bold/italic quote marks
    line = _EMPTY_PARENS.sub("", line)  # "(born )" once its template is gone
    line = _SPACE_AFTER_OPEN.sub(r"\1", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    return line.strip()


def _render_code(code: Wikicode | None) -> str:
    return "".join(_render(n) for n in code.nodes) if code is not None else ""


def _render(node) -> str:
    """Plain text of one parse-tree node (recursive); '' for everything that is not prose."""
    if isinstance(node, Text):
        return node.value
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, Wikilink):
        return _render_wikilink(node)
    if isinstance(node, ExternalLink):
        return _render_code(node.title) if node.title is not None else ""  # bare URLs are not prose
    if isinstance(node, Tag):
        name = str(node.tag).strip().lower()
        if node.wiki_markup in _LIST_MARKUP:
            return "\n" + _LIST
        if name in ("br", "hr"):
            return "\n"
        if name in _DROP_TAGS:
            return ""
        if name == "nowiki":
            return str(node.contents) if node.contents is not None else ""
        return _render_code(node.contents)
    if isinstance(node, Template):
        return _render_template(node)
    if isinstance(node, Heading):
        return "\n"
    if isinstance(node, (Comment, Argument)):
        return ""
    return node.__strip__(normalize=True, collapse=True) or ""  # any node kind added later


def _render_wikilink(link: Wikilink) -> str:
    title = str(link.title).strip()
    if title.startswith(":"):  # [[:Category:X]] is a plain link to that page
        title = title[1:]
    elif ":" in title:
        prefix = title.split(":", 1)[0].strip().lower()
        if prefix in _MEDIA_PREFIXES or (link.text is None and _INTERWIKI.match(prefix)):
            return ""
    if link.text is not None:
        return _render_code(link.text)
    return title.split("#", 1)[0] if not title.startswith("#") else title[1:]


def _positional(tpl: Template) -> list[str]:
    return [_render_code(p.value).strip() for p in tpl.params if not p.showkey]


def _render_template(tpl: Template) -> str:
    """The few inline templates whose output is words of the sentence; every other template is dropped."""
    name = " ".join(str(tpl.name).replace("_", " ").split()).lower()
    args = _positional(tpl)
    if name in ("nowrap", "nobr", "small", "smaller", "big", "sic", "abbr", "ill", "lang-rtl", "keypress"):
        return args[0] if args else ""
    if name in ("lang", "transl", "transliteration", "script"):
        return args[-1] if len(args) >= 2 else ""
    if name.startswith("lang-"):
        return args[0] if args else ""
    if name in ("convert", "cvt") and len(args) >= 2:
        if args[1] in ("-", "–", "to", "and", "or", "by", "x", "×") and len(args) >= 4:
            return f"{args[0]} {args[1]} {args[2]} {args[3]}"
        return f"{args[0]} {args[1]}"
    if name in ("as of",) and args:
        return "As of " + " ".join(args[:3])
    if name in ("circa", "c.") and args:
        return "c. " + args[0]
    if name == "frac" and args:
        return "/".join(args[:3]) if len(args) < 3 else f"{args[0]} {args[1]}/{args[2]}"
    if name in ("snd", "spaced ndash", "spaced en dash"):
        return " – "
    if name in ("ndash", "en dash"):
        return "–"
    if name in ("mdash", "em dash", "mdashb", "spaced mdash"):
        return "—"
    if name in ("nbsp", "sp"):
        return " "
    if name in ("birth date", "death date", "birth date and age", "death date and age", "start date",
                "end date", "dob", "bda", "dda", "start date and age", "film date"):
        return _render_date(args)
    return ""


def _render_date(args: list[str]) -> str:
    """{{birth date|1934|4|11}} -> "April 11, 1934" (numeric y/m/d only; anything else is dropped)."""
    nums = [a for a in args if a.isdigit()][:3]
    if len(nums) == 3 and 1 <= int(nums[1]) <= 12:
        return f"{_MONTHS[int(nums[1]) - 1]} {int(nums[2])}, {nums[0]}"
    if len(nums) == 2 and 1 <= int(nums[1]) <= 12:
        return f"{_MONTHS[int(nums[1]) - 1]} {nums[0]}"
    return nums[0] if nums else ""
