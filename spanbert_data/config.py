"""The build's options: `BuildConfig` and its `MaskingConfig`, defaults reproducing the method (SPEC §1–§3).
Each field's docstring is also its help in `spanbert-data` (cli.py reads them with `field_docs`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MiB = 1 << 20
# Who computes token ids (tokenizer.py): "auto": the compiled encoder where it reproduces the tokenizer exactly,
# else `tokenizers`; "fast": the compiled encoder or a TokenizerError; "hf": always `tokenizers`. The ids never differ.
ENCODERS = ("auto", "fast", "hf")
SCHEMES = ("span", "subword", "whole-word")
VOCAB_MODELS = ("wordpiece", "bpe")  # what `vocab` and `build` without --tokenizer train (vocab.py, bpe_vocab.py)
REPLACEMENTS = ("unigram", "uniform")
# SPEC §3: SBO targets for the first 15 tokens of a merged span, k = 0..14; the shard column sbo_offsets
# (docs/FORMAT.md), the row checks and the model's position table hold no more.
SBO_OFFSETS = 15


def field_docs(cls) -> dict[str, str]:
    """The doc of every field of a config dataclass: the string literal under it, as one line."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


@dataclass(frozen=True)
class MaskingConfig:
    """How blocks are masked; the defaults are SpanBERT's (SPEC §2, §3)."""

    scheme: str = "span"
    """Masking scheme: SpanBERT's geometric spans of whole words ("span"), or the paper's baselines "subword" and
    "whole-word"."""
    mask_ratio: float = 0.15
    """Fraction of content tokens masked per block: exactly ceil(mask_ratio * n) tokens."""
    geometric_p: float = 0.2
    """p of the span length in words, Geometric(p) clipped to 1..max_span_words."""
    max_span_words: int = 10
    """Longest span, in words."""
    max_sbo_offset: int = SBO_OFFSETS
    """How many tokens of a merged span get SBO targets, from its start (k = 0 .. max_sbo_offset - 1; a count, named
    so in the manifest); at most SBO_OFFSETS, 0 = none."""
    mask_token_prob: float = 0.8
    """A decision unit becomes all-[MASK] with this probability ..."""
    random_token_prob: float = 0.1
    """... or all random tokens with this one; the rest is kept unchanged."""
    replacement: str = "unigram"
    """Distribution of the random replacements: the corpus unigram counts, or uniform over the vocabulary."""

    def __post_init__(self) -> None:
        self.validate()  # refuse a bad value where it is set, not in pass 2 of a build

    def validate(self) -> None:
        """Raise ValueError naming the offending field and the rule it breaks."""
        if self.scheme not in SCHEMES:
            raise ValueError(f"masking.scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"masking.replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"masking.mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if not 0.0 < self.geometric_p <= 1.0:
            raise ValueError(f"masking.geometric_p must be in (0, 1], got {self.geometric_p}")
        if not isinstance(self.max_span_words, int) or self.max_span_words < 1:
            raise ValueError(f"masking.max_span_words must be an integer >= 1, got {self.max_span_words!r}")
        if not isinstance(self.max_sbo_offset, int) or not 0 <= self.max_sbo_offset <= SBO_OFFSETS:
            # The shard format and the SBO head's position table hold k in 0..14 (SPEC §3, docs/FORMAT.md);
            # 0 disables SBO targets.
            raise ValueError(
                f"masking.max_sbo_offset must be an integer in 0..{SBO_OFFSETS} (SBO targets only for the first "
                f"{SBO_OFFSETS} tokens of a span, SPEC §3), got {self.max_sbo_offset!r}"
            )
        for name in ("mask_token_prob", "random_token_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"masking.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-12:
            raise ValueError(
                "masking.mask_token_prob + masking.random_token_prob must be <= 1 (the rest is kept unchanged), "
                f"got {self.mask_token_prob} + {self.random_token_prob}"
            )

    def to_dict(self) -> dict:
        """Plain dict of every field (for manifests and logs)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MaskingConfig:
        """Inverse of to_dict; unknown keys are an error (a typo must not silently use a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown masking option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg




@dataclass
class BuildConfig:
    corpus: Path | str | tuple
    """Corpus file, directory (walked recursively in sorted order), glob pattern or URL (s3://, gs://,
    hf://datasets/..., any fsspec URL); repeat it for several, read in the order given. Plain text, WikiExtractor,
    JSON Lines or MediaWiki XML (.gz/.bz2/.xz/.zst), Parquet, Arrow, and datasets' save_to_disk folders."""
    out: Path | str
    """Dataset directory to write or resume (one holding an earlier build with the same options), or a URL:
    s3://BUCKET/PREFIX, gs://…, any fsspec URL (built in `work_dir` and uploaded, spanbert_data/output.py)."""
    tokenizer: Path | None = None
    """HF tokenizer.json (WordPiece, BPE or Unigram), a transformers tokenizer folder or a BERT vocab.txt (default:
    train one on the corpus, SPEC §1)."""
    vocab_size: int = 28996
    """Vocabulary size when training one (BERT-cased size)."""
    vocab_model: str = "wordpiece"
    """The vocabulary trained without --tokenizer: a cased BERT WordPiece, or a byte-level BPE (RoBERTa-style)."""
    vocab_sample_bytes: int = 1024 * MiB
    """Train the vocabulary on about this much of the input (whole units chosen by hash, docs/FORMAT.md); 0 = all
    of it."""
    workers: int | None = None
    """Worker processes (or, with the scheduler 'local', Dask workers) [default: one per usable core, as the CPU
    affinity and the cgroup CPU quota allow; spanbert_data/cores.py]; the bytes written never depend on it."""
    scheduler: str | None = None
    """Run on Dask: tcp://HOST:8786 (an existing cluster whose workers share the output filesystem) or 'local' (a
    LocalCluster of `workers` processes); needs spanbert[dask]. Default: this machine."""
    encoder: str = "auto"
    """Token ids from the compiled WordPiece encoder (fast; auto = where it applies) or from HF tokenizers (hf);
    the ids, so the bytes written, never depend on it."""
    max_seq_len: int = 512
    """Slots per training row; blocks hold at most max_seq_len - 2 content tokens (SPEC §1)."""
    seed: int = 12345
    """Seed of the masks (SPEC §2) and of the held-out documents."""
    mask_epochs: int = 1
    """Different maskings of every block to write (epoch-0 .. epoch-K-1)."""
    valid_fraction: float = 0.01
    """Fraction of documents held out for evaluation (valid/, mask epoch 0); 0 disables it."""
    rows_per_shard: int = 65536
    """At most this many rows per training shard (about 100 MB at 512 slots)."""
    unit_bytes: int = 64 * MiB
    """Input is processed in units of about this size: small files grouped in order, large ones cut (pass 1's unit
    of work)."""
    text_field: str = "text"
    """The column (Parquet, Arrow) or JSON Lines field that holds each document's text."""
    split: str = "train"
    """The split to read from a DatasetDict folder or a Hub dataset folder."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """The masking scheme and its parameters (SPEC §2)."""
    work_dir: Path | None = None
    """With a URL `out`: the local staging directory (default: under ~/.cache/spanbert, by URL)."""

    def validate(self) -> None:
        """Raise ValueError naming the field and the rule it breaks."""
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.encoder not in ENCODERS:
            raise ValueError("encoder must be auto, fast or hf")
        if not 8 <= self.max_seq_len <= 65535:
            raise ValueError("max_seq_len must be between 8 and 65535")
        if self.mask_epochs < 1:
            raise ValueError("mask_epochs must be >= 1")
        if not 0.0 <= self.valid_fraction < 0.5:
            raise ValueError("valid_fraction must be in [0, 0.5)")
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be >= 1")
        if self.vocab_size < 100:
            raise ValueError("vocab_size must be >= 100")
        if self.vocab_model not in VOCAB_MODELS:
            raise ValueError(f"vocab_model must be one of {', '.join(VOCAB_MODELS)}")
        if self.vocab_model == "bpe" and self.vocab_size <= 261:
            raise ValueError("vocab_size must be > 261 for a byte-level BPE (5 specials and 256 bytes)")
        if self.vocab_sample_bytes < 0:
            raise ValueError("vocab_sample_bytes must be >= 0")
        if self.unit_bytes < 1:
            raise ValueError("unit_bytes must be >= 1")
        if not self.corpora:
            raise ValueError("corpus: give at least one")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError("text_field must be a non-empty column name")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError("split must be a non-empty split name")
        self.masking.validate()

    @property
    def corpora(self) -> tuple[str, ...]:
        """The corpus entries (paths, globs, URLs) in the order given."""
        entries = [self.corpus] if isinstance(self.corpus, (str, os.PathLike)) else list(self.corpus)
        return tuple(str(e) for e in entries)

    @property
    def max_content(self) -> int:
        return self.max_seq_len - 2

    def options(self) -> dict:
        """Every option that changes the bytes written (saved in build.json and the manifest)."""
        d = dataclasses.asdict(self)
        for key in ("corpus", "out", "workers", "scheduler", "encoder", "tokenizer", "work_dir"):
            d.pop(key)
        d["masking"] = self.masking.to_dict()
        if self.vocab_model == "wordpiece":  # recorded only when not the default: earlier builds still resume
            d.pop("vocab_model")
        return d
