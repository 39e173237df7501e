"""spanbert_train: a lean DDP trainer for SpanBERT that streams the shards built by spanbert_data."""

import importlib

from spanbert_data import __version__  # one version for the project (pyproject.toml)

__all__ = ["__version__", "load_sbo_head"]


def __getattr__(name):
    # Found by name when first used, so that `import spanbert_train` (and `spanbert-train --help`) does not pay
    # for importing torch.
    if name == "load_sbo_head":
        return importlib.import_module("spanbert_train.export").load_sbo_head
    raise AttributeError(f"module 'spanbert_train' has no attribute {name!r}")
