"""The Triton kernel of the ``triton_sm100`` backend (``triton_sm100.py`` launches it). Importing
this module imports triton; ``triton_sm100`` imports it on first use only.

One kernel for both formats: ``out = alpha * (A @ B^T) + bias`` with ``tl.dot_scaled``, which Triton
lowers to the tcgen05 block-scaled MMA on sm_100 (``kind::mxf8f6f4`` for e4m3, ``kind::mxf4nvf4`` for
e2m1 with e4m3 scales) when BLOCK_M >= 128; a smaller tile silently falls back to a bf16 MMA.

Operands, all through TMA tensor descriptors (zero-filled past the edges, so M, N and K need not be
multiples of the tile):

* ``a_desc``: A qdata [M, K / EPB] bytes (EPB elements per byte: 1 for e4m3, 2 for packed e2m1,
  element 2i in the low nibble), block [BLOCK_M, BLOCK_K / EPB]. ``b_desc``: B [N, K / EPB], block
  [BLOCK_N, BLOCK_K / EPB].
* ``a_scale_desc``: A's 128x4 swizzled scales viewed as 5-D [1, M_pad / 128, S_pad / 4, 2, 256]
  (batch, 128-row tile, 4-column tile, the 512 bytes of one tile as two 256-byte halves: a TMA box
  dimension holds at most 256 elements), block [1, BLOCK_M / 128, BLOCK_K / VEC / 4, 2, 256]. In
  tile memory order, byte j * 16 + i * 4 + c holds row i * 32 + j, column c; the kernel reshapes
  the block back to [BLOCK_M, BLOCK_K / VEC]. ``b_scale_desc`` the same for B's N rows. The
  padding bytes of the layout may hold anything: padding rows meet zero-filled qdata rows whose
  outputs are never stored, padding columns are zeroed in the kernel (``MASK_PADDING``).
* ``out_desc``: out [M, N], block [BLOCK_M, BLOCK_N]; its dtype is the output dtype.
* ``bias_ptr``: None or [N] (any float dtype, added in float32).
* ``a_ts_ptr``, ``b_ts_ptr``: None (MXFP8) or one float32 each (NVFP4): alpha = a_ts * b_ts.

Persistent: a grid of at most one program per SM walks the output tiles, GROUP_M tile rows at a
time (tiles that share rows of B run close together, for the L2 cache).
"""

import triton
import triton.language as tl

from .triton_common import tile_coordinates


@triton.jit
def load_scales(
    desc, tile_row, k_step, scale_cols,
    BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr, MASK_PADDING: tl.constexpr,
):  # fmt: skip
    """The [BLOCK_ROWS, BLOCK_K / VEC] block scales of 128-row tiles tile_row * BLOCK_ROWS / 128 ...
    and K step k_step, from the 5-D swizzled view (see the module docstring). MASK_PADDING: zero
    the layout's padding columns (scale columns >= scale_cols = K / VEC, present when K / VEC is
    not a multiple of 4): the MMA multiplies them with zero-filled qdata, and a NaN byte there would
    turn every output of the row into NaN (0 * NaN)."""
    REP_ROWS: tl.constexpr = BLOCK_ROWS // 128
    REP_K: tl.constexpr = BLOCK_K // VEC // 4
    s = desc.load([0, tile_row * REP_ROWS, k_step * REP_K, 0, 0])
    # [1, REP_ROWS, REP_K, 2, 256] -> (tile row, tile column, j, i, c) -> (tile row, i, j, tile column, c)
    s = s.reshape(REP_ROWS, REP_K, 32, 4, 4).trans(0, 3, 2, 1, 4)
    s = s.reshape(BLOCK_ROWS, BLOCK_K // VEC)
    if MASK_PADDING:
        cols = k_step * (BLOCK_K // VEC) + tl.arange(0, BLOCK_K // VEC)
        s = tl.where(cols[None, :] < scale_cols, s, tl.zeros_like(s))
    return s


@triton.jit
def block_scaled_mm_kernel(
    a_desc,
    a_scale_desc,
    b_desc,
    b_scale_desc,
    out_desc,
    bias_ptr,
    a_ts_ptr,
    b_ts_ptr,
    M,
    N,
    K,
    FORMAT: tl.constexpr,  # "e4m3" (MXFP8) or "e2m1" (NVFP4)
    VEC: tl.constexpr,  # elements per scale: 32 or 16
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    MASK_PADDING: tl.constexpr,  # K / VEC % 4 != 0: the scales have padding columns (load_scales)
):
    EPB: tl.constexpr = 2 if FORMAT == "e2m1" else 1
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    alpha = 1.0
    if a_ts_ptr is not None:
        alpha = tl.load(a_ts_ptr) * tl.load(b_ts_ptr)

    for tile in range(tl.program_id(0), num_pid_m * num_pid_n, tl.num_programs(0)):
        pid_m, pid_n = tile_coordinates(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k_step in range(k_steps):
            a = a_desc.load([pid_m * BLOCK_M, k_step * (BLOCK_K // EPB)])
            b = b_desc.load([pid_n * BLOCK_N, k_step * (BLOCK_K // EPB)])
            a_scale = load_scales(a_scale_desc, pid_m, k_step, K // VEC, BLOCK_M, BLOCK_K, VEC, MASK_PADDING)
            b_scale = load_scales(b_scale_desc, pid_n, k_step, K // VEC, BLOCK_N, BLOCK_K, VEC, MASK_PADDING)
            acc = tl.dot_scaled(a, a_scale, FORMAT, b.T, b_scale, FORMAT, acc)

        acc = acc * alpha
        if bias_ptr is not None:
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0)
            acc = acc + bias.to(tl.float32)[None, :]
        out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_desc.dtype))
