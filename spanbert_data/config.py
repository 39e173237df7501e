"""The build's options, one dataclass, defaults reproducing the method (SPEC §1–§3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from spanbert_data.masking import MaskingConfig

MiB = 1 << 20


@dataclass
class BuildConfig:
    corpus: Path
    """A corpus file or a directory walked recursively in sorted order."""
    out: Path | str
    """The dataset directory to write (created; resumed when it holds an earlier build with the same options), or
    an fsspec URL (s3://bucket/prefix, gs://...): built in `work_dir` and uploaded (spanbert_data/remote_build.py)."""
    tokenizer: Path | None = None
    """A HF tokenizer.json or a BERT vocab.txt; None trains a cased WordPiece on the corpus first (SPEC §1)."""
    vocab_size: int = 28996
    """Size of the vocabulary trained when no tokenizer is given (BERT-cased size)."""
    vocab_sample_bytes: int = 1024 * MiB
    """The vocabulary is trained on about this many bytes of input units (docs/FORMAT.md); 0 = the whole corpus."""
    workers: int | None = None
    """Worker processes (or, with `scheduler="local"`, Dask workers); None: one per usable core
    (`cores.usable_cores()`: CPU affinity and cgroup quota). The bytes written never depend on it."""
    scheduler: str | None = None
    """None: this machine (`workers` processes). "local": a Dask LocalCluster of `workers` processes.
    "tcp://HOST:8786": an existing Dask cluster whose workers share the output filesystem."""
    encoder: str = "auto"
    """Who computes token ids: auto (the compiled WordPiece encoder where it applies), fast or hf
    (HF `tokenizers`); the ids, so the bytes written, never depend on it."""
    max_seq_len: int = 512
    """Slots per training row; blocks hold at most max_seq_len - 2 content tokens (SPEC §1)."""
    seed: int = 12345
    """Seed of the masks (SPEC §2) and of the held-out document choice."""
    mask_epochs: int = 1
    """How many different maskings of every block to write (epoch-0 .. epoch-K-1)."""
    valid_fraction: float = 0.01
    """Fraction of documents held out for evaluation (valid/, mask epoch 0); 0 disables it."""
    rows_per_shard: int = 65536
    """Upper bound of rows per training shard (about 100 MB at 512 slots)."""
    unit_bytes: int = 64 * MiB
    """Input files are grouped, in order, into units of about this many bytes (pass 1's unit of work)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """The masking scheme and its parameters (SPEC §2)."""
    work_dir: Path | None = None
    """Staging directory of a build to a URL (default: under the cache directory, keyed by the URL)."""

    def validate(self) -> None:
        """Raise ValueError naming the field and the rule it breaks."""
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.encoder not in ("auto", "fast", "hf"):
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
        if self.vocab_sample_bytes < 0:
            raise ValueError("vocab_sample_bytes must be >= 0")
        if self.unit_bytes < 1:
            raise ValueError("unit_bytes must be >= 1")
        self.masking.validate()

    @property
    def max_content(self) -> int:
        return self.max_seq_len - 2

    def options(self) -> dict:
        """Every option that changes the bytes written (saved in build.json and the manifest)."""
        d = dataclasses.asdict(self)
        for key in ("corpus", "out", "workers", "scheduler", "encoder", "tokenizer", "work_dir"):
            d.pop(key)
        d["masking"] = self.masking.to_dict()
        return d
