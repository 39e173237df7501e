"""spanbert_train: a lean DDP trainer for SpanBERT that streams the shards built by spanbert_data."""

__version__ = "0.1.0"
