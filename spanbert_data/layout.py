"""What a dataset directory holds, by name: its format and the files every reader and writer agrees on
(docs/FORMAT.md)."""

from __future__ import annotations

FORMAT_NAME = "spanbert-dataset"
FORMAT_VERSION = 2  # 2: input units are (source, sub) pairs (store/unit-SSSSS-JJJJJ.json); the shards are as in 1
READABLE_VERSIONS = (1, 2)  # what the trainer and `verify` read: the manifest fields and shards they use are unchanged
MANIFEST = "manifest.json"  # written last: a dataset is complete once it exists
BUILD_FILE = "build.json"  # written first: claims the directory and pins the options of a resumable build
TOKENIZER_FILE = "tokenizer.json"
