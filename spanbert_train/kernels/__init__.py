"""Fused Triton kernels, each beside a plain-PyTorch reference of the same function."""
