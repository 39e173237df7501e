"""spanbert_train: a lean DDP trainer for SpanBERT that streams the shards built by spanbert_data."""

__version__ = "0.1.0"
__all__ = ["load_sbo_head"]


def __getattr__(name):
    # Lazy, so that `spanbert-train --help` does not pay for importing torch.
    if name == "load_sbo_head":
        from spanbert_train.export import load_sbo_head

        return load_sbo_head
    raise AttributeError(f"module 'spanbert_train' has no attribute {name!r}")
