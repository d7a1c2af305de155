"""The ``triton_sm90`` backend: the readable, hackable Hopper GEMMs in Triton (compute capability 9.0),
for MXFP8 (``mxfp8_mm``), NVFP4 (``nvfp4_mm``, W4A4) and the NVFP4 weight-only W4A16 product
(``nvfp4_weight_only_mm``).

Hopper has no block-scaled MMA, and Triton's stock ``tl.dot_scaled`` decodes both operands to bf16
inside the MMA loop there (see the ``triton_stock`` backend). This backend uses the mixed-input
design instead (``triton_mm_kernels.weight_decoded_mm_kernel``):

1. the activation is bf16 (or fp16): for W4A16 the caller's activation as it is; for MXFP8 and W4A4
   the exact decode of the quantized activation by the native dequantize kernel (one memory-bound
   pass over [M, K]; NVFP4 without its tensor scale, which goes to the epilogue);
2. the GEMM decodes each weight tile (arrived by TMA with its scales) in registers: only one operand
   is transformed. For small M it computes out^T = decode(w) @ a^T, where the decoded tile is
   wgmma's register operand; for large M, a @ decode(w)^T with the decoded tile stored to shared
   memory, which is faster with Triton 3.6 (ptxas serializes its register-operand wgmmas). NVFP4
   tensor scales multiply the float32 accumulator in the epilogue.

Exactness: e2m1 x e4m3 is always a bfloat16 (and float16) value, so NVFP4 products are exact up to
float32 accumulation order. e4m3 x 2^(e - 127) is a bfloat16 value unless it falls below bfloat16's
subnormal grid, which needs an MXFP8 scale byte below 3 (block amax under about 2^-116) with nonzero
data (the same domain as the ``cutlass`` backend's mixed-input kernel, the CUDA version of this design).
W4A16 with a float32 activation is computed by the reference path (the kernel's dots are bf16/fp16).

Tiles per shape (``tiles_for``, a fixed heuristic: nothing is tuned in the call path).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import formats
from . import reference
from .base import BackendSpec, TritonBackend, aligned_16, triton_interpreted


@dataclass(frozen=True)
class Tiles:
    block_n: int  # weight rows per program (the dot's M)
    block_m: int  # activation rows per program (the dot's N)
    block_k: int
    num_stages: int
    num_warps: int
    split_k: int = 1  # programs sharing one output tile, each a 1 / split_k of the K steps
    weight_in_registers: bool = True  # the decoded weight as wgmma's register operand, else via shared memory
    group_m: int = 8

    def __str__(self) -> str:
        split = f", split-K {self.split_k}" if self.split_k > 1 else ""
        operand = "weight in registers" if self.weight_in_registers else "weight via shared memory"
        return f"{self.block_n}x{self.block_m}x{self.block_k}, {self.num_stages} stages, {self.num_warps} warps{split}, {operand}"


def tiles_for(fmt: str, m: int, n: int, k: int) -> Tiles:
    """The tile configuration for an [m, k] x [n, k]^T product (picked from sweeps on an H100,
    recorded in docs/backend-selection.md): from M = 65 on, wide tiles, and above M = 512 the
    weight through shared memory; for small M, where the
    weight stream is the whole cost, narrow activation tiles and, when N gives too few weight tiles
    to fill the GPU, split-K (MXFP8: about 3 programs per SM of an H100; NVFP4, whose decode is the
    bottleneck there, 4 times more)."""
    if m > 512:  # the weight through shared memory: 8-18% faster at M = 4096 (not at M = 512)
        if fmt == "mxfp8":
            return Tiles(128, 128, 128, 2, 8, weight_in_registers=False)
        return Tiles(128, 256, 64, 4, 8, weight_in_registers=False)
    if m > 64:
        return Tiles(128, 128, 128, 3, 8)
    block_k = 128 if fmt == "mxfp8" else 256
    block_m = 16 if m <= 16 else 64
    weight_tiles = -(-n // 64)
    wanted = (396 if fmt == "mxfp8" else 1584) // weight_tiles
    split_k = 1
    while split_k * 2 <= min(wanted, 8, k // block_k):
        split_k *= 2
    return Tiles(64, block_m, block_k, 4 if fmt == "mxfp8" else 3, 4, split_k)


@functools.cache
def _kernel():
    """The Triton kernel, imported (and so triton itself) on first use, never at package import."""
    from . import triton_mm_kernels

    return triton_mm_kernels.weight_decoded_mm_kernel


def decode_activation(fmt: str, a_q: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """A quantized activation -> bfloat16 [M, K], exact (MXFP8: within the domain in the module
    docstring; NVFP4: e2m1 x e4m3 without the tensor scale): the reference backend's decode, which
    runs the native kernel where it can (CPU tensors and the interpreter: ``formats``)."""
    if fmt == "mxfp8":
        return reference.dequantize_mxfp8(a_q, a_s, torch.bfloat16)
    # made per call: a cached tensor first made during CUDA-graph capture would hold no value eagerly
    one = torch.ones((), dtype=torch.float32, device=a_q.device)
    return reference.dequantize_nvfp4(a_q, a_s, one, torch.bfloat16)


def kernel_arguments(fmt: str, a: torch.Tensor, w_q, w_s, alpha, bias, out, t: Tiles):
    """(positional arguments, constexpr keywords, launch options, grid) of
    ``weight_decoded_mm_kernel`` for ``weight_decoded_mm``'s operands, ``out`` [M, N] and tiles
    ``t``. The tests compile the kernel ahead of time from these same arguments."""
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    f = formats.FORMATS[fmt]
    m, k = a.shape
    n = w_q.shape[0]
    tiles_per_row = f.scale_shape(n, k)[1] // 4
    scale_rows = w_s.view(torch.uint8).reshape(-1, 16)  # a 512-byte tile of the layout is 32 rows
    scale_tiles_per_step = t.block_k // (4 * f.block_size)
    args = (
        TensorDescriptor.from_tensor(a, [t.block_m, t.block_k]),
        TensorDescriptor.from_tensor(w_q, [t.block_n, t.block_k // f.elements_per_byte]),
        TensorDescriptor.from_tensor(scale_rows, [32 * scale_tiles_per_step, 16]),
        alpha, bias, out, m, n, k, tiles_per_row,
    )  # fmt: skip
    constexprs = dict(
        FORMAT=fmt,
        VEC=f.block_size,
        DOT_DTYPE=tl.float16 if a.dtype == torch.float16 else tl.bfloat16,
        BLOCK_N=t.block_n,
        BLOCK_M=t.block_m,
        BLOCK_K=t.block_k,
        GROUP_M=t.group_m,
        SPLIT_K=t.split_k,
        WEIGHT_IN_REGISTERS=t.weight_in_registers,
        INTERPRETED=triton_interpreted(),
    )
    grid = (-(-m // t.block_m) * -(-n // t.block_n), t.split_k)
    return args, constexprs, dict(num_stages=t.num_stages, num_warps=t.num_warps), grid


def weight_decoded_mm(fmt: str, a: torch.Tensor, w_q, w_s, alpha_a, alpha_b, bias, out_dtype) -> torch.Tensor:
    """out [M, N] = alpha_a * alpha_b * (a @ decode(w).T) + bias for a bfloat16/float16 activation
    a [M, K] and a canonical weight of format ``fmt`` (w_q [N, K / EPB], w_s swizzled); alpha_a,
    alpha_b None or one float32 each (NVFP4 tensor scales); bias None or [N] of any float dtype
    (added in float32). Runs on CPU tensors under TRITON_INTERPRET=1."""
    a, w_q, w_s = aligned_16(a.contiguous()), aligned_16(w_q), aligned_16(w_s.contiguous())  # TMA descriptors
    bias = None if bias is None else bias.contiguous()
    alphas = [t.reshape(()).to(torch.float32) for t in (alpha_a, alpha_b) if t is not None]
    alpha = None if not alphas else alphas[0] if len(alphas) == 1 else alphas[0] * alphas[1]
    m, n = a.shape[0], w_q.shape[0]
    t = tiles_for(fmt, m, n, a.shape[1])
    if t.split_k == 1:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
        args, constexprs, options, grid = kernel_arguments(fmt, a, w_q, w_s, alpha, bias, out, t)
        _kernel()[grid](*args, **constexprs, **options)
        return out
    # split-K: float32 partial sums added into a zeroed buffer, then alpha, bias and one rounding
    partial_sums = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    args, constexprs, options, grid = kernel_arguments(fmt, a, w_q, w_s, None, None, partial_sums, t)
    _kernel()[grid](*args, **constexprs, **options)
    if alpha is not None:
        partial_sums *= alpha
    if bias is not None:
        partial_sums += bias
    return partial_sums.to(out_dtype)


class TritonSm90Backend(TritonBackend):
    spec = BackendSpec(
        name="triton_sm90",
        description=(
            "Triton mixed-input GEMMs for Hopper: the weight decoded in registers (then wgmma's register "
            "operand, or through shared memory for large M), the activation bf16 (MXFP8, NVFP4 W4A4, W4A16)"
        ),
        ops=("mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm"),
        capabilities=((9, 0),),
        n_multiple=8,
        k_multiple=32,
    )

    def kernel_config(self, fmt, m, n, k):
        return str(tiles_for("mxfp8" if fmt == "mxfp8" else "nvfp4", m, n, k))

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        a = decode_activation("mxfp8", a_q, a_s)
        return weight_decoded_mm("mxfp8", a, b_q, b_s, None, None, bias, out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        a = decode_activation("nvfp4", a_q, a_s)
        return weight_decoded_mm("nvfp4", a, b_q, b_s, a_ts, b_ts, bias, out_dtype)

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias):
        if a.dtype == torch.float32:  # the kernel's dots are bf16/fp16
            return reference.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)
        return weight_decoded_mm("nvfp4", a, b_q, b_s, None, b_ts, bias, a.dtype)
