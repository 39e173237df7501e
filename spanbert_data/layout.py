"""What a dataset directory holds, by name: its format and the files every reader and writer agrees on
(docs/FORMAT.md)."""

from __future__ import annotations

FORMAT_NAME = "spanbert-dataset"
# 2: input units are (source, sub) pairs (store/unit-SSSSS-JJJJJ.json); 3: held-out documents chosen by their content
# (the store's doc_hash column), units of Parquet/Arrow files. The shards' layout is that of 1 throughout.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # what the trainer and `verify` read: the manifest fields and shards they use
MANIFEST = "manifest.json"  # written last: a dataset is complete once it exists
BUILD_FILE = "build.json"  # written first: claims the directory and pins the options of a resumable build
TOKENIZER_FILE = "tokenizer.json"
