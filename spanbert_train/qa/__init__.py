"""Extractive question answering (SQuAD v1.1 / v2.0) as a probe of a pre-trained encoder."""
