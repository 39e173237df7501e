"""spanbert_data: corpus → tokens → blocks → span masking → packed Arrow shards (no torch here)."""

__version__ = "0.1.0"
