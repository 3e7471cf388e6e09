"""Triton kernels only; dispatch and autograd live in dprope_kernels.ops."""
