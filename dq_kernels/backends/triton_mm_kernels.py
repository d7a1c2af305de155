"""Triton GEMM kernels of the ``triton_sm90`` and ``triton_stock`` backends. Importing this module
imports triton; the backends import it on first use only.

Operands are canonical (see dq_kernels.formats): qdata row-major [rows, K / EPB] bytes (EPB elements
per byte: 1 for MXFP8's e4m3, 2 for NVFP4's packed e2m1, element 2i in the low nibble); block
scales as bytes in the 128x4 swizzled layout with ``tiles_per_row`` = round_up(K / VEC, 4) / 4
512-byte tiles per 128 rows (VEC = 32 for MXFP8's E8M0 scales, 16 for NVFP4's e4m3 scales); out
[M, N] row-major; bias None or [N] of any float dtype (added in float32).
"""

import triton
import triton.language as tl

from .triton_common import decode_e8m0, e2m1_as_e4m3, swizzled_scale_offsets, tile_coordinates


@triton.jit
def decode_weight_tile(q, s, FORMAT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr):
    """[BLOCK_N, BLOCK_K] float32 values of a weight tile, without NVFP4's tensor scale: q is the
    qdata tile ([BLOCK_N, BLOCK_K] e4m3 or [BLOCK_N, BLOCK_K / 2] packed e2m1 bytes), s its block
    scale bytes [BLOCK_N, BLOCK_K / VEC]. Every value is exact in float32."""
    if FORMAT == "mxfp8":
        values = q.to(tl.float32)
        scales = decode_e8m0(s)
    else:
        codes = q.to(tl.uint8, bitcast=True)
        # each e2m1 code as the e4m3 of its value / 64, which the GPU converts in one instruction per pair
        values = tl.join(e2m1_as_e4m3(codes & 0xF), e2m1_as_e4m3(codes >> 4)).reshape(BLOCK_N, BLOCK_K)
        values = values.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        scales = s.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 64.0
    scaled = values.reshape(BLOCK_N, BLOCK_K // VEC, VEC) * scales[:, :, None]
    return scaled.reshape(BLOCK_N, BLOCK_K)


@triton.jit
def load_weight_scales(s_desc, row0, k0, K, tiles_per_row, FORMAT: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, VEC: tl.constexpr):
    """The scale bytes [BLOCK_N, BLOCK_K / VEC] of weight rows row0 .. row0 + BLOCK_N (row0 a multiple
    of BLOCK_N, which is 64 or 128) in the K step at k0, by TMA, so that Triton pipelines them with the
    tiles.

    s_desc is a descriptor over the swizzled scales viewed as rows of 16 bytes (block [32 * T, 16]):
    a 512-byte tile of the layout (128 rows x 4 scale columns) is 32 such rows, byte (r % 32,
    4 * ((r % 128) // 32) + j % 4), and the T = BLOCK_K / (4 * VEC) tiles of one K step are
    consecutive (in a last, partial K step the ones past the row block's end belong to the next row
    block, or lie past the tensor and read as zeros). Blocks past K read as the scale 1, so those and
    padding bytes (NaN, say) change nothing."""
    tl.static_assert(BLOCK_N == 64 or BLOCK_N == 128, "a weight tile covers one half or all of a 128-row scale tile")
    tl.static_assert(BLOCK_K % (4 * VEC) == 0, "a K step covers whole 512-byte scale tiles")
    T: tl.constexpr = BLOCK_K // (4 * VEC)
    tile = (row0 // 128) * tiles_per_row + k0 // (4 * VEC)
    raw = s_desc.load([tile * 32, 0])
    s = raw.reshape(T, 32, 4, 4).permute(2, 1, 0, 3).reshape(128, 4 * T)  # [row % 128, block]
    if BLOCK_N == 64:
        low, high = s.reshape(2, 64, 4 * T).permute(1, 2, 0).split()
        s = tl.where(row0 % 128 == 0, low, high)
    blocks = k0 // VEC + tl.arange(0, 4 * T)
    one = 127 if FORMAT == "mxfp8" else 0x38  # E8M0 and e4m3 bytes of 1.0
    return tl.where(blocks[None, :] < K // VEC, s, one).to(tl.uint8)


@triton.jit
def weight_decoded_mm_kernel(
    a_desc, w_desc, s_desc, alpha_ptr, bias_ptr, out_ptr,
    M, N, K, tiles_per_row,
    FORMAT: tl.constexpr, VEC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, WEIGHT_IN_REGISTERS: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """out[M, N] = alpha * (a[M, K] @ decode(w)[N, K].T) + bias: the mixed-input design.

    a_desc: a TMA descriptor over the activation a [M, K] of DOT_DTYPE, bfloat16 or float16 (block
    [BLOCK_M, BLOCK_K]): a bf16/fp16 activation as it is (W4A16), or the exact bf16 decode of a quantized one.
    w_desc: a descriptor over the weight's qdata (block [BLOCK_N, BLOCK_K / EPB]); s_desc one over
    its scales (see load_weight_scales). alpha_ptr: None (1) or one float32, NVFP4's product of tensor scales.

    Each program owns a [BLOCK_M, BLOCK_N] tile of out. Both tiles arrive by TMA, pipelined; the
    weight tile is decoded in registers to a's dtype (exact: e4m3 x 2^k and e2m1 x e4m3 are bf16
    values, and e2m1 x e4m3 are fp16 values; MXFP8 only loses bits below bf16's subnormal grid, for
    scale bytes below 3 with nonzero data) and multiplied with one of two dots:

    - WEIGHT_IN_REGISTERS: the transposed product decode(w) @ a^T, whose left operand is wgmma's
      register operand on Hopper, so the decoded weight never goes through shared memory. The only
      dot with a narrow activation tile (wgmma's N can be 16; its M is at least 64): small M.
    - otherwise a @ decode(w)^T: Triton stores the decoded weight in shared memory and both wgmma
      operands come from there. Faster for large M with Triton 3.6, whose register-operand wgmmas
      ptxas serializes (see docs/hopper-mixed-input.md).

    Accumulation in float32; alpha, bias and one rounding in the epilogue.

    SPLIT_K > 1 (small M, where one program's chain of K steps is the latency to hide): program
    axis 1 takes the K steps s, s + SPLIT_K, ... and adds its float32 partial sum into out_ptr, a
    zeroed float32 [M, N] buffer, with atomics; alpha and bias are then the caller's (the
    partial sums add in any order, so results may differ in the last bits between runs).

    INTERPRETED: Triton 3.9's interpreter computes bf16 dots wrongly, so there both operands go to
    the dot as float32 (the same exact values, the same accumulation).
    """
    EPB: tl.constexpr = 1 if FORMAT == "mxfp8" else 2
    pid_m, pid_n = tile_coordinates(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    if WEIGHT_IN_REGISTERS:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # out^T
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(tl.program_id(1) * BLOCK_K, K, BLOCK_K * SPLIT_K):
        s = load_weight_scales(s_desc, pid_n * BLOCK_N, k0, K, tiles_per_row, FORMAT, BLOCK_N, BLOCK_K, VEC)
        q = w_desc.load([pid_n * BLOCK_N, k0 // EPB])
        w = decode_weight_tile(q, s, FORMAT, BLOCK_N, BLOCK_K, VEC).to(DOT_DTYPE)
        a = a_desc.load([pid_m * BLOCK_M, k0])
        if INTERPRETED:
            w, a = w.to(tl.float32), a.to(tl.float32)
        if WEIGHT_IN_REGISTERS:
            acc_t = tl.dot(w, a.T, acc_t)
        else:
            acc = tl.dot(a, w.T, acc)
    if WEIGHT_IN_REGISTERS:
        acc = acc_t.T
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_mask = (rows_m[:, None] < M) & (rows_n[None, :] < N)
    out_offsets = rows_m[:, None] * N + rows_n[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(out_ptr + out_offsets, acc, mask=out_mask, sem="relaxed")
        return
    if alpha_ptr is not None:
        acc *= tl.load(alpha_ptr)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + rows_n, mask=rows_n < N, other=0.0)[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def mxfp8_dot_scaled_mm_kernel(
    a_q_ptr, a_s_ptr, b_q_ptr, b_s_ptr, bias_ptr, out_ptr,
    M, N, K, tiles_per_row,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """out[M, N] = a @ b.T + bias with Triton's stock ``tl.dot_scaled`` (the ``triton_stock``
    comparison backend): plain pointer loads of both MXFP8 operands and their scales, one
    ``tl.dot_scaled(..., "e4m3", ...)`` per K step. What Triton makes of it depends on the GPU
    (on Hopper it upcasts both operands to bf16 before a bf16 MMA)."""
    pid_m, pid_n = tile_coordinates(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    SCALES: tl.constexpr = BLOCK_K // 32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        blocks = k0 // 32 + tl.arange(0, SCALES)
        valid = blocks[None, :] < K // 32
        a = tl.load(a_q_ptr + rows_m[:, None] * K + ks[None, :], mask=(rows_m[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(b_q_ptr + rows_n[:, None] * K + ks[None, :], mask=(rows_n[:, None] < N) & (ks[None, :] < K), other=0.0)
        a_e = tl.load(a_s_ptr + swizzled_scale_offsets(rows_m, blocks, tiles_per_row), mask=valid, other=127)
        b_e = tl.load(b_s_ptr + swizzled_scale_offsets(rows_n, blocks, tiles_per_row), mask=valid, other=127)
        acc = tl.dot_scaled(a, a_e, "e4m3", b.T, b_e, "e4m3", acc)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + rows_n, mask=rows_n < N, other=0.0)[None, :]
    out_mask = (rows_m[:, None] < M) & (rows_n[None, :] < N)
    tl.store(out_ptr + rows_m[:, None] * N + rows_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)
