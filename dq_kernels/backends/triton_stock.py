"""The ``triton_stock`` comparison backend: Triton's own ``tl.dot_scaled`` on MXFP8, as a user would
write it (``triton_mm_kernels.mxfp8_dot_scaled_mm_kernel``), so benchmarks measure our Hopper
kernels against it in the same run. Never chosen by ``auto``.

On Hopper Triton lowers ``tl.dot_scaled`` by upcasting both operands to bf16 before a bf16 MMA.
Known inexactness: Triton's Hopper E8M0 decode turns scale byte 0 into 0.0 (through Triton 3.8), so
blocks with the scale 2^-127 read as zero here.
"""

from __future__ import annotations

import functools

import torch

from .. import formats
from .base import BackendSpec, TritonBackend

BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, NUM_STAGES, NUM_WARPS = 128, 128, 128, 8, 3, 8


@functools.cache
def _kernel():
    from . import triton_mm_kernels

    return triton_mm_kernels.mxfp8_dot_scaled_mm_kernel


def dot_scaled_mm(a_q, a_s, b_q, b_s, bias, out_dtype) -> torch.Tensor:
    """out [M, N] = a @ b.T + bias for canonical MXFP8 operands; bias None or [N] of any float dtype
    (added in float32). Runs on CPU tensors under TRITON_INTERPRET=1."""
    m, k = a_q.shape
    n = b_q.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=a_q.device)
    grid = (-(-m // BLOCK_M) * -(-n // BLOCK_N),)
    tiles_per_row = formats.MXFP8.scale_shape(n, k)[1] // 4
    _kernel()[grid](
        a_q, a_s, b_q, b_s, None if bias is None else bias.contiguous(), out, m, n, k, tiles_per_row,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M, num_stages=NUM_STAGES, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


class TritonStockBackend(TritonBackend):
    spec = BackendSpec(
        name="triton_stock",
        description="Triton's stock tl.dot_scaled on MXFP8 (comparison only; byte-0 scales read as 0 on Hopper)",
        ops=("mxfp8_mm",),
        capabilities=((9, 0), (10, 0), (10, 3)),
        auto=False,
        n_multiple=8,
        k_multiple=32,
    )

    def kernel_config(self, fmt, m, n, k):
        return f"{BLOCK_M}x{BLOCK_N}x{BLOCK_K}, {NUM_STAGES} stages, {NUM_WARPS} warps"

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        return dot_scaled_mm(a_q, a_s, b_q, b_s, bias, out_dtype)
