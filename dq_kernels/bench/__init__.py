"""Benchmarks behind ``dq-kernels bench``.

shapes: named GEMM shape sets and ``MxKxN`` parsing; timing: CUDA-event timing with a cold L2;
gemm: ``bench gemm``; report: tables, the JSON header and PNG plots shared by every benchmark.

Layering: bench uses dq_kernels' public API (and dq_kernels.backends, dq_kernels.native); nothing in
the rest of the package imports bench.
"""
