"""Triton kernels of the cast backend (``triton_cast.py`` launches them). Importing this module
imports triton; ``triton_cast`` imports it on first use only.

Shapes and layouts: x [M, K] (row stride ``stride_xm``, unit column stride) in bf16/fp16/fp32; one
program per [BLOCK_M, TILE_K] tile, whose scale blocks it writes into the swizzled layout; the grid
covers the padded rows and scale columns too, so the layout's padding is written (zero blocks encode
as zero bytes). q is [M, K] e4m3 (MXFP8) or [M, K / 2] packed e2m1 bytes (NVFP4); s is the swizzled
scale buffer as bytes.

With ``DEQUANTIZED`` the kernels write, instead of q and s, the values q and s stand for into
``out`` [M, K]: MXFP8 element x block scale (bf16), NVFP4 element x block scale (f16, without the
tensor scale), what the native dequantize kernels would make of q and s.
"""

import triton
import triton.language as tl

from .triton_common import decode_e8m0, e2m1_as_e4m3, pow2_from_exponent_bits, swizzled_scale_offsets


@triton.jit
def div_const(x, c: tl.constexpr, BY_RECIPROCAL: tl.constexpr):
    """x / c as torch computes it for a Python-number divisor: an IEEE division on CPU tensors,
    a multiplication by the float32 reciprocal 1/c on CUDA tensors (torch's CUDA shortcut), so the
    kernel matches the reference on whichever device it runs."""
    if BY_RECIPROCAL:
        return x * (1.0 / c)
    else:
        return tl.math.div_rn(x, c)


@triton.jit
def ceil_log2(d):
    """Exact ceil(log2(d)) for finite float32 d >= 0 from its bits (formats._ceil_log2)."""
    bits = d.to(tl.int32, bitcast=True)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    normal = exponent - 127 + (mantissa != 0).to(tl.int32)
    subnormal = tl.where(mantissa > 0x400000, -126, -127)
    return tl.where(exponent == 0, subnormal, normal)


@triton.jit
def to_e4m3_bytes(y, INTERPRETED: tl.constexpr):
    """float32 |y| <= 448 (or NaN) -> float8_e4m3fn bytes (uint8), round to nearest even; NaN -> 0x7F.

    The GPU's conversion (cvt.rn.satfinite) does exactly this. Triton 3.9's interpreter does not: it
    rounds half up, drops the carry into the exponent and encodes NaN as 0x7C, so under it the value
    is rounded to the e4m3 grid in float32 first and NaN is written explicitly."""
    if INTERPRETED:
        y = tl.where(y != y, y, round_to_e4m3(y))
    q = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    if INTERPRETED:
        q = tl.where(y != y, 0x7F, q).to(tl.uint8)
    return q


@triton.jit
def round_to_e4m3(y):
    """float32 |y| <= 448 -> the nearest e4m3 value (ties to even), still as float32, so that a
    conversion to float8 that follows is exact. NaN stays NaN."""
    bits = y.to(tl.int32, bitcast=True)
    exponent = (bits >> 23) & 0xFF
    # spacing of e4m3 values around |y|: 2^(floor(log2|y|) - 3), and 2^-9 among the subnormals
    ulp_exponent = tl.maximum(exponent - 3, 127 - 9)
    magic = ((ulp_exponent + 23) << 23).to(tl.float32, bitcast=True)  # ulp * 2^23: float32 spacing ulp
    rounded = (tl.abs(y) + magic) - magic
    signed = (rounded.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)  # keeps -0.0
    return tl.where(y != y, y, signed)


@triton.jit
def block_amax(xb):
    """max |x| over the last axis, NaN if the block holds a NaN (as torch.amax)."""
    amax = tl.max(tl.abs(xb), axis=2)
    has_nan = tl.max((xb != xb).to(tl.int32), axis=2) > 0
    return tl.where(has_nan, float("nan"), amax)


@triton.jit
def load_tile(x_ptr, M, K, stride_xm, BLOCK_M: tl.constexpr, TILE_K: tl.constexpr):
    """The program's [BLOCK_M, TILE_K] tile of x as float32 (zeros outside the tensor)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * TILE_K + tl.arange(0, TILE_K)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
    return x.to(tl.float32), rows, cols, mask


@triton.jit
def mxfp8_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, K, stride_xm, tiles_per_row, FLOOR: tl.constexpr,
                 BY_RECIPROCAL: tl.constexpr, BLOCK_M: tl.constexpr, TILE_K: tl.constexpr,
                 INTERPRETED: tl.constexpr, DEQUANTIZED: tl.constexpr):
    x, rows, cols, mask = load_tile(x_ptr, M, K, stride_xm, BLOCK_M, TILE_K)
    xb = tl.reshape(x, (BLOCK_M, TILE_K // 32, 32))
    amax = block_amax(xb)
    if FLOOR:
        # floor(log2(amax)) - 8 from the exponent field; torchao divides by max(scale, 2^-126)
        unbiased = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127 - 8
        e = tl.minimum(tl.maximum(unbiased, -127), 128) + 127
        e = tl.where(amax != amax, 255, e)
        reciprocal = tl.where(e == 0, 2.0**126, pow2_from_exponent_bits(254 - e))
        reciprocal = tl.where(e == 255, 0.0, reciprocal)  # x / inf
    else:
        descale = div_const(amax, 448.0, BY_RECIPROCAL)
        e = tl.minimum(tl.maximum(ceil_log2(descale), -127), 127) + 127
        e = tl.where(descale == float("inf"), 254, e)
        e = tl.where(descale != descale, 255, e)
        reciprocal = tl.where(e == 0, 1.0, pow2_from_exponent_bits(254 - e))
        reciprocal = tl.where(e == 255, descale, reciprocal)  # NaN stays NaN
    y = tl.clamp(xb * reciprocal[:, :, None], -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
    y = tl.reshape(y, (BLOCK_M, TILE_K))
    q = to_e4m3_bytes(y, INTERPRETED)
    if DEQUANTIZED:
        values = tl.reshape(q.to(tl.float8e4nv, bitcast=True).to(tl.float32), (BLOCK_M, TILE_K // 32, 32))
        values = tl.reshape(values * decode_e8m0(e)[:, :, None], (BLOCK_M, TILE_K))
        tl.store(out_ptr + rows[:, None] * K + cols[None, :], values.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(q_ptr + rows[:, None] * K + cols[None, :], q, mask=mask)
        blocks = tl.program_id(1) * (TILE_K // 32) + tl.arange(0, TILE_K // 32)
        s_mask = blocks[None, :] < tiles_per_row * 4  # the padded scale columns exist; rows always do
        tl.store(s_ptr + swizzled_scale_offsets(rows, blocks, tiles_per_row), e.to(tl.uint8), mask=s_mask)


@triton.jit
def encode_e2m1(y):
    """float32 y -> e2m1 code (int32 0..15), rounded to nearest even (formats._encode_e2m1's
    thresholds, in fewer instructions): |y|, capped at 6, is rounded to the e2m1 grid in float32 by
    adding and subtracting a power of two whose float32 spacing is the grid step (0.5 below 2, 1 up to
    4, 2 up to 6); the code of a grid value v >= 1 is then its float32 bits >> 22, less 252 (exponent
    and first mantissa bit), and of 0 or 0.5 it is 2v. NaN gives an unspecified code."""
    a = tl.minimum(tl.abs(y), 6.0)
    exponent = (a.to(tl.int32, bitcast=True) >> 23) & 0xFF
    step_exponent = tl.maximum(exponent - 1, 126)  # biased exponent of the grid step
    magic = ((step_exponent + 23) << 23).to(tl.float32, bitcast=True)
    v = (a + magic) - magic
    code = tl.where(v >= 1.0, (v.to(tl.int32, bitcast=True) >> 22) - 252, (v * 2.0).to(tl.int32))
    return code | ((y.to(tl.int32, bitcast=True) >> 28) & 8)


@triton.jit
def load_pairs(xp_ptr, M, K, stride_xpm, BLOCK_M: tl.constexpr, TILE_K: tl.constexpr, IS_BF16: tl.constexpr):
    """The program's [BLOCK_M, TILE_K] tile of x as two float32 tiles [BLOCK_M, TILE_K / 2]: elements
    2i and 2i + 1, read as one integer per pair (xp_ptr: x viewed as int32 pairs of 16-bit floats or
    int64 pairs of float32, row stride stride_xpm pairs). One contiguous load, and the halves come
    apart with bit operations: no strided loads, no data exchange between threads."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.program_id(1) * (TILE_K // 2) + tl.arange(0, TILE_K // 2)
    mask = (rows[:, None] < M) & (pairs[None, :] < K // 2)
    v = tl.load(xp_ptr + rows[:, None] * stride_xpm + pairs[None, :], mask=mask, other=0)
    if xp_ptr.dtype.element_ty == tl.int64:  # float32 pairs
        low = (v & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
        high = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    elif IS_BF16:
        low = (v << 16).to(tl.float32, bitcast=True)
        high = (v & -65536).to(tl.float32, bitcast=True)
    else:  # float16 pairs
        low = v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        high = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high, rows, pairs, mask


@triton.jit
def nvfp4_kernel(xp_ptr, q_ptr, s_ptr, ts_ptr, amax_ptr, ts_out_ptr, out_ptr, M, K, stride_xpm, tiles_per_row,
                 DYNAMIC: tl.constexpr, BY_RECIPROCAL: tl.constexpr, IS_BF16: tl.constexpr,
                 BLOCK_M: tl.constexpr, TILE_K: tl.constexpr, INTERPRETED: tl.constexpr,
                 DEQUANTIZED: tl.constexpr):
    """xp_ptr: x as pairs (see load_pairs); q: [M, K / 2] bytes, element 2i in the low nibble;
    out (DEQUANTIZED): [M, K] float16 viewed as int32 pairs [M, K / 2], element 2i in the low half."""
    if DYNAMIC:
        ts = div_const(tl.load(amax_ptr).to(tl.float32, bitcast=True), 2688.0, BY_RECIPROCAL)  # amax / (448 * 6)
    else:
        ts = tl.load(ts_ptr)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(ts_out_ptr, ts)
    low, high, rows, pairs, mask = load_pairs(xp_ptr, M, K, stride_xpm, BLOCK_M, TILE_K, IS_BF16)
    low = tl.reshape(low, (BLOCK_M, TILE_K // 16, 8))  # a block of 16 elements is 8 pairs
    high = tl.reshape(high, (BLOCK_M, TILE_K // 16, 8))
    amax = tl.maximum(block_amax(low), block_amax(high), propagate_nan=tl.PropagateNan.ALL)
    block_scale = div_const(amax, 6.0, BY_RECIPROCAL)
    # the e4m3 block scale, rounded in float32 (exactly representable from here on)
    divisor = tl.where(ts == 0, 1.0, ts)  # an all-zero tensor (formats.quantize_nvfp4)
    s = tl.clamp(tl.math.div_rn(block_scale, divisor), 2.0**-6, 448.0, propagate_nan=tl.PropagateNan.ALL)
    s_bytes = to_e4m3_bytes(s, INTERPRETED)
    s = s_bytes.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # the scale as stored
    reciprocal = tl.math.div_rn(tl.math.div_rn(1.0, divisor), s)[:, :, None]
    if DEQUANTIZED:
        # e2m1 value (as e4m3 of value / 64, exact) * 64 * the stored block scale: exact in f16
        scale64 = s[:, :, None] * 64.0
        low_value = e2m1_as_e4m3(encode_e2m1(low * reciprocal)).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
        high_value = e2m1_as_e4m3(encode_e2m1(high * reciprocal)).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
        low_bits = (low_value.to(tl.float32) * scale64).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        high_bits = (high_value.to(tl.float32) * scale64).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        pairs_out = tl.reshape((low_bits & 0xFFFF) | (high_bits << 16), (BLOCK_M, TILE_K // 2))
        tl.store(out_ptr + rows[:, None] * (K // 2) + pairs[None, :], pairs_out, mask=mask)
    else:
        packed = encode_e2m1(low * reciprocal) | (encode_e2m1(high * reciprocal) << 4)
        packed = tl.reshape(packed, (BLOCK_M, TILE_K // 2)).to(tl.uint8)
        tl.store(q_ptr + rows[:, None] * (K // 2) + pairs[None, :], packed, mask=mask)
        # padding rows and scale columns of the layout hold zero bytes (a zero block's scale is 2^-6)
        blocks = tl.program_id(1) * (TILE_K // 16) + tl.arange(0, TILE_K // 16)
        in_tensor = (rows[:, None] < M) & (blocks[None, :] < K // 16)
        s_bytes = tl.where(in_tensor, s_bytes, 0).to(tl.uint8)
        s_mask = blocks[None, :] < tiles_per_row * 4
        tl.store(s_ptr + swizzled_scale_offsets(rows, blocks, tiles_per_row), s_bytes, mask=s_mask)


@triton.jit
def amax_kernel(x_ptr, amax_ptr, M, K, stride_xm):
    """amax_ptr (int32, zeroed) <- max over the tensor of the float32 bits of |x|, one atomic per
    128 x 128 tile. Non-negative floats order like their bits and NaN's bits exceed inf's, so a NaN
    anywhere wins, as in torch.amax."""
    x, rows, cols, mask = load_tile(x_ptr, M, K, stride_xm, 128, 128)
    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    amax = tl.where(tl.max(tl.max((x != x).to(tl.int32), axis=1), axis=0) > 0, float("nan"), amax)
    tl.atomic_max(amax_ptr, amax.to(tl.int32, bitcast=True))
