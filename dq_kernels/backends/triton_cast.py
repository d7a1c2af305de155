"""Triton cast kernels: ``quantize_mxfp8`` and ``quantize_nvfp4`` on CUDA GPUs (sm_89 and newer).

One pass over a bf16/fp16/fp32 input [M, K] (row stride >= K) writes the canonical operands:
qdata, and the block scales straight into the 128x4 swizzled layout, padding included. Each program
owns one 512-byte scale tile (128 rows x 4 scale columns), so the padding rows and columns of the
layout are written by the same program that writes its neighbours (masked loads read them as zeros,
and a zero block encodes as scale byte 0).

Bit-identical to ``dq_kernels.formats`` (and so to torchao) for both scaling modes: the arithmetic
is the reference's, step by step: the divisions as torch does them on the input's device (see
``div_const``), RCEIL's exact ceil(log2(.)), powers of two built from float bit patterns, clamps that
keep NaN. The one exception: the element bytes of a NaN block may differ in
their NaN encodings (the block scale is NaN either way, so the block decodes to NaN).

NVFP4 with a dynamic tensor scale is two passes: an amax kernel (atomic max of float bits), then the
cast, which derives the tensor scale itself and writes it out.

``quantize_dequantize_*`` run the same kernels but write the values the quantized operands stand
for (bit-identical to dequantizing the quantized operands), for a GEMM that takes its activation
decoded: the quantized activation is then never written.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import formats
from .base import BackendSpec, TritonBackend, triton_interpreted

AMAX_TILE = 128  # the amax pass reads 128 x 128 tiles


@dataclass(frozen=True)
class Tiling:
    """Rows and columns of x per program (BLOCK_M divides 128, TILE_K a multiple of 4 scale blocks),
    and warps per program."""

    block_m: int
    tile_k: int
    warps: int


MXFP8_TILING = Tiling(64, 128, 8)  # best of 10 tilings on an H100 at 4096x3072 to 16384x15360
NVFP4_TILING = Tiling(32, 128, 2)  # best of 11 there


def _grid(tiling: Tiling, scale_shape: tuple[int, int], block: int) -> tuple[int, int]:
    """Programs over the padded rows and padded scale columns of swizzled scales of ``scale_shape``."""
    return scale_shape[0] // tiling.block_m, -(-scale_shape[1] * block // tiling.tile_k)


@functools.cache
def _kernels():
    """The Triton kernels, imported (and so triton itself) on first use, never at package import."""
    from . import triton_cast_kernels as k
    from .triton_common import FastLaunch

    return FastLaunch(k.mxfp8_kernel), FastLaunch(k.nvfp4_kernel), FastLaunch(k.amax_kernel)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> a 2-D [M, K] view with unit column stride (a copy only when no view exists)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _as_pairs(x2: torch.Tensor) -> torch.Tensor:
    """[M, K] -> [M, K / 2] int32 (16-bit floats) or int64 (float32) pairs of neighbouring elements;
    copies x first when its row stride or address does not allow the view."""
    pair = torch.int64 if x2.dtype == torch.float32 else torch.int32
    if x2.stride(0) % 2 or x2.data_ptr() % pair.itemsize:
        x2 = x2.contiguous()
    return x2.view(pair)


def _mxfp8_pass(x: torch.Tensor, scaling: str, dequantized: bool):
    """One launch of the MXFP8 cast kernel: (q, s), or the bf16 values they stand for."""
    mxfp8_kernel, _, _ = _kernels()
    x2 = _as_rows(x)
    m, k = x2.shape
    scale_shape = formats.MXFP8.scale_shape(m, k)
    if dequantized:
        out = torch.empty((m, k), dtype=torch.bfloat16, device=x.device)
        q, s = out, out  # not written
    else:
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device).view(torch.uint8)
        s = out = torch.empty(scale_shape, dtype=torch.uint8, device=x.device)  # out: not written
    t = MXFP8_TILING
    mxfp8_kernel(
        _grid(t, scale_shape, 32), x2, q, s, out, m, k, x2.stride(0), scale_shape[1] // 4, FLOOR=scaling == "floor",
        BY_RECIPROCAL=x.is_cuda, BLOCK_M=t.block_m, TILE_K=t.tile_k, INTERPRETED=triton_interpreted(),
        DEQUANTIZED=dequantized, num_warps=t.warps,
    )
    return out if dequantized else (q.view(torch.float8_e4m3fn), s)


def quantize_mxfp8(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``formats.quantize_mxfp8`` on the GPU (or under TRITON_INTERPRET=1 on CPU tensors)."""
    return _mxfp8_pass(x, scaling, dequantized=False)


def quantize_dequantize_mxfp8(x: torch.Tensor, scaling: str) -> torch.Tensor:
    """x [..., K] rounded to MXFP8 and decoded: bfloat16 [M, K], bit-identical to
    ``formats.dequantize_mxfp8(*formats.quantize_mxfp8(x, scaling), torch.bfloat16)``."""
    return _mxfp8_pass(x, scaling, dequantized=True)


def _nvfp4_pass(x: torch.Tensor, tensor_scale: torch.Tensor | None, dequantized: bool):
    """The NVFP4 cast (an amax pass first for a dynamic tensor scale): (q, s, tensor scale), or
    (the f16 values q and s stand for, tensor scale)."""
    _, nvfp4_kernel, amax_kernel = _kernels()
    x2 = _as_rows(x)
    m, k = x2.shape
    scale_shape = formats.NVFP4.scale_shape(m, k)
    if dequantized:
        out = torch.empty((m, k), dtype=torch.float16, device=x.device)
        q = s = out = out.view(torch.int32)  # q, s: not written; out as pairs of f16
    else:
        q = torch.empty(formats.NVFP4.qdata_shape(m, k), dtype=torch.uint8, device=x.device)
        s = out = torch.empty(scale_shape, dtype=torch.float8_e4m3fn, device=x.device).view(torch.uint8)
    ts_out = torch.empty((), dtype=torch.float32, device=x.device)
    if tensor_scale is None:
        amax_bits = torch.zeros((), dtype=torch.int32, device=x.device)
        amax_kernel((-(-m // AMAX_TILE), -(-k // AMAX_TILE)), x2, amax_bits, m, k, x2.stride(0))
        ts_in = ts_out  # unused by the dynamic kernel
    else:
        amax_bits, ts_in = ts_out, tensor_scale.reshape(())  # amax unused by the static kernel
    t = NVFP4_TILING
    xp = _as_pairs(x2)
    nvfp4_kernel(
        _grid(t, scale_shape, 16), xp, q, s, ts_in, amax_bits, ts_out, out, m, k, xp.stride(0), scale_shape[1] // 4,
        DYNAMIC=tensor_scale is None, BY_RECIPROCAL=x.is_cuda, IS_BF16=x.dtype == torch.bfloat16,
        BLOCK_M=t.block_m, TILE_K=t.tile_k, INTERPRETED=triton_interpreted(), DEQUANTIZED=dequantized,
        num_warps=t.warps,
    )
    if dequantized:
        return out.view(torch.float16), ts_out
    return q, s.view(torch.float8_e4m3fn), ts_out


def quantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``formats.quantize_nvfp4`` on the GPU; dynamic tensor scale (None) in two passes."""
    return _nvfp4_pass(x, tensor_scale, dequantized=False)


def quantize_dequantize_nvfp4(x: torch.Tensor, tensor_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] rounded to NVFP4 and decoded without its tensor scale: (float16 [M, K] of
    e2m1 x block scale, the 0-dim float32 tensor scale), bit-identical to ``formats.quantize_nvfp4``
    followed by ``formats.dequantize_nvfp4`` with a tensor scale of 1."""
    return _nvfp4_pass(x, tensor_scale, dequantized=True)


class TritonCastBackend(TritonBackend):
    spec = BackendSpec(
        name="triton_cast",
        description="Triton cast kernels: one pass to qdata + swizzled scales (bit-identical to the reference)",
        ops=("quantize_mxfp8", "quantize_nvfp4"),
        capabilities=((8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)),
    )

    def quantize_mxfp8(self, x, scaling):
        return quantize_mxfp8(x, scaling)

    def quantize_nvfp4(self, x, tensor_scale):
        return quantize_nvfp4(x, tensor_scale)

    def can_quantize_dequantize(self, fmt):
        return True

    def quantize_dequantize_mxfp8(self, x, scaling):
        return quantize_dequantize_mxfp8(x, scaling)

    def quantize_dequantize_nvfp4(self, x, tensor_scale):
        return quantize_dequantize_nvfp4(x, tensor_scale)
