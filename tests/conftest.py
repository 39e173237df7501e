"""Test-wide setup.

Triton kernels only run on CPU through its interpreter, and the interpreter must be switched on
before any kernel is decorated, i.e. before spanbert_train.kernels is imported anywhere.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
