"""The ``triton_sm100`` backend: Triton ``tl.dot_scaled`` GEMMs for Blackwell GPUs. One kernel,
two instruction families, chosen by Triton from the target:

* compute capability 10.0 and 10.3 (B200, GB200, B300): the tcgen05 block-scaled MMA
  (``kind::mxf8f6f4`` for MXFP8, ``kind::mxf4nvf4`` for NVFP4, scales copied to tensor memory with
  ``tcgen05.cp``);
* compute capability 12.0 and 12.1 (RTX 50, RTX PRO Blackwell, DGX Spark): the block-scaled
  ``mma.sync`` (``mma.sync.aligned.m16n8k32 ... kind::mxf8f6f4.block_scale`` for MXFP8,
  ``m16n8k64 ... kind::mxf4nvf4.block_scale.scale_vec::4X`` for NVFP4).

The kernel is ``triton_sm100_kernels.block_scaled_mm_kernel`` (one for both formats; its docstring
has the operand layouts): TMA tensor descriptors for qdata and output, 5-D descriptors over the
128x4 swizzled scales, a persistent grid of one program per SM, alpha (NVFP4: a_ts * b_ts) and bias
in a float32 epilogue, one rounding to the output dtype (bf16, fp16 or fp32).

Tiles (``tiles_for``), 128 bytes of qdata per row and K step unless noted, 4 warps, BLOCK_M 128
(smaller tiles silently lose the block-scaled MMA on sm_100), BLOCK_N 128 (the scale descriptor's
block covers whole 128-row tiles), shared memory as Triton 3.8 compiles them:

* sm_100 / sm_103 (227 KB per block): BLOCK_K 128 (MXFP8) or 256 (NVFP4), 4 stages: 168-213 KB;
* sm_120 / sm_121 (99 KB per block): the same at 2 stages: MXFP8 66.6 KB (16-bit output) or 99.4
  KB (float32), NVFP4 69.7 KB (16-bit output); NVFP4 with float32 output takes BLOCK_K 128 (64
  bytes per row and step): 84.0 KB (BLOCK_K 256 would need 102.4 KB).

None is tuned on hardware: all are compile-verified (python_tests/test_sm100.py asserts the MMA in
the PTX and the shared memory) and interpreter-verified, not run on a Blackwell GPU.

Shape limits (the spec's data, from TMA's 16-byte rule): K % 32 == 0 (NVFP4 rows are K / 2 bytes;
MXFP8's block is 32 anyway) and N % 8 == 0 (output rows).

Without a GPU the same kernel runs on CPU tensors under ``TRITON_INTERPRET=1`` (the tests and
``dq-kernels selftest`` do), with the tiles of the capability asked for (sm_100's by default).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import formats
from . import base
from .base import BackendSpec, TritonBackend, aligned_16


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    block_k: int  # elements
    num_stages: int
    num_warps: int = 4
    group_m: int = 8  # tile rows per group of the persistent schedule


SM100_TILES = {"mxfp8": Tiles(128, 128, 128, 4), "nvfp4": Tiles(128, 128, 256, 4)}
SM120_TILES = {"mxfp8": Tiles(128, 128, 128, 2), "nvfp4": Tiles(128, 128, 256, 2)}
SM120_NVFP4_FP32_TILES = Tiles(128, 128, 128, 2)  # BLOCK_K 256 with a float32 output tile needs 102.4 KB
SM120_MAX_SHARED = 101376  # bytes of shared memory per block on sm_120 / sm_121 (99 KB, opt-in)
INTERPRETED_PROGRAMS = 2  # the persistent grid on CPU tensors (TRITON_INTERPRET=1)


def tiles_for(fmt_name: str, capability: tuple[int, int], out_dtype: torch.dtype) -> Tiles:
    """The tiles for format ``fmt_name`` on a GPU of ``capability`` writing ``out_dtype``."""
    if capability[0] != 12:
        return SM100_TILES[fmt_name]
    return SM120_NVFP4_FP32_TILES if (fmt_name, out_dtype) == ("nvfp4", torch.float32) else SM120_TILES[fmt_name]
DOT_FORMAT = {"mxfp8": "e4m3", "nvfp4": "e2m1"}  # tl.dot_scaled's name of the element type


@functools.cache
def _kernel():
    """The Triton kernel, imported (and so triton itself) on first use, never at package import."""
    from . import triton_sm100_kernels

    return triton_sm100_kernels.block_scaled_mm_kernel


@functools.cache
def _num_programs(device: torch.device) -> int:
    """The persistent grid: one program per SM (INTERPRETED_PROGRAMS on CPU tensors)."""
    if device.type != "cuda":
        return INTERPRETED_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _capability(device: torch.device) -> tuple[int, int]:
    """The device's compute capability; sm_100's for CPU tensors (the interpreter)."""
    return base.capability(device) if device.type == "cuda" else (10, 0)



def _scale_view(s: torch.Tensor, fmt: formats.Format, rows: int, k: int) -> torch.Tensor:
    """Swizzled scales -> the kernel's 5-D view [1, rows_pad / 128, cols_pad / 4, 2, 256]."""
    rows_pad, cols_pad = fmt.scale_shape(rows, k)
    return s.view(1, rows_pad // 128, cols_pad // 4, 2, 256)


def kernel_arguments(fmt_name, a_q, a_s, b_q, b_s, a_ts, b_ts, bias, out, capability=(10, 0)):
    """(positional arguments, constexpr keywords, launch options) of ``block_scaled_mm_kernel`` for
    canonical operands of format ``fmt_name`` ("mxfp8" or "nvfp4"; a_ts and b_ts None for MXFP8),
    ``out`` [M, N] and the tiles of ``capability``. The tests compile the kernel ahead of time from
    these same arguments."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    fmt, tiles = formats.FORMATS[fmt_name], tiles_for(fmt_name, capability, out.dtype)
    m, n, k = a_q.shape[0], b_q.shape[0], a_q.shape[1] * fmt.elements_per_byte
    bm, bn, bk = tiles.block_m, tiles.block_n, tiles.block_k
    k_bytes = bk // fmt.elements_per_byte
    scale_cols = bk // fmt.block_size // 4  # 4-column scale tiles per K step

    def descriptor(t, block):
        return TensorDescriptor.from_tensor(aligned_16(t), block)

    args = (
        descriptor(a_q, [bm, k_bytes]),
        descriptor(_scale_view(a_s, fmt, m, k), [1, bm // 128, scale_cols, 2, 256]),
        descriptor(b_q, [bn, k_bytes]),
        descriptor(_scale_view(b_s, fmt, n, k), [1, bn // 128, scale_cols, 2, 256]),
        descriptor(out, [bm, bn]),
        None if bias is None else bias.contiguous(),
        None if a_ts is None else a_ts.reshape(()),
        None if b_ts is None else b_ts.reshape(()),
        m,
        n,
        k,
    )
    constexprs = dict(
        FORMAT=DOT_FORMAT[fmt_name], VEC=fmt.block_size, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=tiles.group_m,
        MASK_PADDING=(k // fmt.block_size) % 4 != 0,
    )
    return args, constexprs, dict(num_stages=tiles.num_stages, num_warps=tiles.num_warps)


def block_scaled_mm(
    fmt_name, a_q, a_s, b_q, b_s, a_ts, b_ts, bias, out_dtype, num_programs=None, capability=None
):
    """out [M, N] = alpha * (a @ b.T) + bias for canonical operands (see ``kernel_arguments``).
    ``num_programs``: the persistent grid (default: one program per SM), at most one per output
    tile. ``capability``: whose tiles to use (default: the device's; sm_100's on the CPU). Runs on
    CPU tensors under TRITON_INTERPRET=1."""
    m, n = a_q.shape[0], b_q.shape[0]
    capability = capability or _capability(a_q.device)
    out = torch.empty(m, n, dtype=out_dtype, device=a_q.device)
    args, constexprs, options = kernel_arguments(fmt_name, a_q, a_s, b_q, b_s, a_ts, b_ts, bias, out, capability)
    tiles = tiles_for(fmt_name, capability, out_dtype)
    tiles_total = -(-m // tiles.block_m) * -(-n // tiles.block_n)
    if num_programs is None:
        num_programs = _num_programs(a_q.device)
    _kernel()[(min(num_programs, tiles_total),)](*args, **constexprs, **options)
    return out


class TritonSm100Backend(TritonBackend):
    spec = BackendSpec(
        name="triton_sm100",
        description=(
            "Triton tl.dot_scaled GEMMs on the block-scaled MMA: tcgen05 on sm_100 / sm_103, mma.sync on "
            "sm_120 / sm_121 (compile-verified only)"
        ),
        ops=("mxfp8_mm", "nvfp4_mm"),
        capabilities=((10, 0), (10, 3), (12, 0), (12, 1)),
        n_multiple=8,
        k_multiple=32,
    )

    def kernel_config(self, fmt, m, n, k):
        """The tiles on the current CUDA device (sm_100's without one), for a 16-bit output."""
        on_cuda = torch.cuda.is_available()
        capability = _capability(torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu"))
        t = tiles_for(fmt, capability, torch.bfloat16)
        return f"{t.block_m}x{t.block_n}x{t.block_k}, {t.num_stages} stages, persistent"

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        return block_scaled_mm("mxfp8", a_q, a_s, b_q, b_s, None, None, bias, out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        return block_scaled_mm("nvfp4", a_q, a_s, b_q, b_s, a_ts, b_ts, bias, out_dtype)
