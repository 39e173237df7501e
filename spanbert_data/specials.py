"""Special-token roles (CLS, SEP, MASK, PAD, UNK) read off a tokenizer's own configuration.

Examples are `CLS block SEP`, masked positions show MASK, rows end in PAD (SPEC §1–§2), so a dataset needs the
ids of these roles; the manifest records them (`tokenizer.special_ids`, docs/FORMAT.md) and everything after
the build takes them from there. Where they come from, first found wins:

1. a `transformers` folder's `tokenizer_config.json` and `special_tokens_map.json` (`mask_token`, ...; CLS and
   SEP fall back to `bos_token` and `eos_token`);
2. the post-processor of tokenizer.json: the special token before `$A` in a template (or RobertaProcessing's and
   BertProcessing's `cls`) is CLS, the one after it SEP;
3. the model's unknown token (WordPiece and BPE `unk_token`, Unigram `unk_id`), the padding's `pad_token`;
4. the usual names, `[MASK]` / `<mask>` and so on (`NAMES`), as a token of the vocabulary.

MASK, PAD, CLS and SEP are required (`missing_roles` names what to add); UNK is optional: a byte-level BPE
spells every byte and has none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

ROLES = ("pad", "unk", "cls", "sep", "mask")  # the manifest's keys (docs/FORMAT.md)
REQUIRED = ("cls", "sep", "mask", "pad")
NAMES = {
    "pad": ("[PAD]", "<pad>", "<PAD>"),
    "unk": ("[UNK]", "<unk>", "<UNK>"),
    "cls": ("[CLS]", "<s>", "<cls>", "<CLS>"),
    "sep": ("[SEP]", "</s>", "<sep>", "<SEP>"),
    "mask": ("[MASK]", "<mask>", "<MASK>"),
}
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_FALLBACK = {"cls": "bos_token", "sep": "eos_token"}


def _content(value) -> str | None:
    """A token named in a transformers config: a string, or an AddedToken dict with its "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def folder_config(folder: Path) -> dict[str, str]:
    """role -> token named by a transformers folder's config files (tokenizer_config.json wins over the map).
    Raises ValueError for a file that is not a JSON object."""
    named: dict[str, str] = {}
    for name in reversed(CONFIG_FILES):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a JSON object")
        for role in ROLES:
            for key in (f"{role}_token", _FALLBACK.get(role)):
                token = _content(data.get(key)) if key else None
                if token is not None:
                    named[role] = token
                    break
    return named


def _post_processor_roles(post: dict | None) -> dict[str, str]:
    if not post:
        return {}
    kind = post.get("type")
    if kind == "Sequence":
        found: dict[str, str] = {}
        for p in post.get("processors") or []:
            found = {**_post_processor_roles(p), **found}
        return found
    if kind in ("RobertaProcessing", "BertProcessing"):
        return {role: post[role][0] for role in ("cls", "sep") if isinstance(post.get(role), list)}
    if kind == "TemplateProcessing":
        items = post.get("single") or []
        names = [next(iter(i.values())).get("id") if "SpecialToken" in i else "$A" for i in items]
        if "$A" not in names:
            return {}
        at = names.index("$A")
        before, after = names[:at], names[at + 1 :]
        return {**({"cls": before[-1]} if before else {}), **({"sep": after[0]} if after else {})}
    return {}


def special_roles(spec: dict, vocab: Mapping[str, int],
                  named: Mapping[str, str] | None = None) -> dict[str, int | None]:  # fmt: skip
    """role -> id (None when the tokenizer has no such token) for a tokenizer.json (parsed), its vocabulary with
    added tokens, and the tokens a transformers folder names (`folder_config`)."""
    model = spec.get("model") or {}
    found: dict[str, str] = dict(_post_processor_roles(spec.get("post_processor")))
    unk = model.get("unk_token")
    if model.get("type") == "Unigram" and isinstance(model.get("unk_id"), int):
        pieces = model.get("vocab") or []
        unk = pieces[model["unk_id"]][0] if 0 <= model["unk_id"] < len(pieces) else None
    if isinstance(unk, str):
        found["unk"] = unk
    padding = spec.get("padding") or {}
    if isinstance(padding.get("pad_token"), str):
        found["pad"] = padding["pad_token"]
    found.update(named or {})
    ids: dict[str, int | None] = {}
    for role in ROLES:
        token = found.get(role)
        if token is None or token not in vocab:
            token = next((t for t in NAMES[role] if t in vocab), token)
        ids[role] = vocab.get(token) if token is not None else None
    return ids


def missing_roles(ids: Mapping[str, int | None]) -> list[str]:
    """The required roles without a token."""
    return [role for role in REQUIRED if ids.get(role) is None]


def missing_message(source: str, missing: list[str]) -> str:
    """One line: what is missing and how to add it."""
    names = ", ".join(f"{r.upper()} ({NAMES[r][0]} or {NAMES[r][1]})" for r in missing)
    keys = ", ".join(f"{r}_token" for r in missing)
    it = "them" if len(missing) > 1 else "it"
    return (f"{source}: no {names} token; add {it} to the tokenizer (tokenizers: "
            f"tokenizer.add_special_tokens([...]); save tokenizer.json) or name it as {keys} in the "
            "tokenizer_config.json of a transformers folder passed as --tokenizer")
