"""Format descriptors, reference quantize/dequantize, and the 128x4 swizzled scale layout.

Everything here is pure torch and runs on any device. It is the numerical definition that every
backend must reproduce, and it is bit-identical to torchao 0.18 (``to_mx`` and ``nvfp4_quantize``).

Canonical operands (one format for every backend):

* MXFP8: ``q`` float8_e4m3fn [M, K] row-major; ``s`` uint8 E8M0 bytes, one per 32 elements along K,
  in the 128x4 swizzled layout (``to_blocked``), shape [round_up(M, 128), round_up(K / 32, 4)].
* NVFP4: ``q`` uint8 [M, K / 2], two e2m1 codes per byte, element 2i in the low nibble and 2i + 1
  in the high nibble; ``s`` float8_e4m3fn, one per 16 elements along K, swizzled the same way,
  shape [round_up(M, 128), round_up(K / 16, 4)]; ``tensor_scale`` a 0-dim float32 tensor.

The ops check shapes, dtypes and devices, never values (that would cost a host sync per call).
``check_scales`` and ``check_activation_scale`` are the checked path for scales made outside
dq_kernels: call them once when the operands are made. The swizzled layout itself cannot always be
told from the bytes: see ``check_scales`` for what it catches.

Divisions by constants (amax / 448, / 6, / 2688) are torch's own: an IEEE division on CPU, a
multiplication by the float32 reciprocal on CUDA (torch's shortcut for a Python-number divisor).
torchao computes them the same way, so the parity holds on each device; the cast kernels follow
the device they run on.

Special values:

* E8M0 byte e decodes to 2^(e - 127); byte 0 is 2^-127 (not zero) and byte 255 is NaN.
* MXFP8: a block holding a NaN gets scale byte 255, so the whole block decodes to NaN. An inf
  saturates to +-448 with the largest scale (FLOOR: byte 247; RCEIL: byte 254); the other elements of
  its block flush to zero. Finite values above the range saturate to +-448 (no inf in e4m3fn).
* NVFP4: e2m1 has no NaN or inf. A NaN in a block makes its e4m3 scale NaN (0x7F), so the block
  decodes to NaN; the element codes of such a block are unspecified (torchao writes 0x3, we write
  0x0). With a dynamic tensor scale, a NaN or inf anywhere makes the tensor scale NaN or inf and
  every block NaN. With a given finite tensor scale an inf saturates to +-6. An all-zero tensor has
  tensor scale 0 and decodes to zeros (torchao's scales are NaN there: it divides by 0).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "Format",
    "MXFP8",
    "NVFP4",
    "FORMATS",
    "round_up",
    "swizzled_scale_shape",
    "to_blocked",
    "from_blocked",
    "quantize_mxfp8",
    "quantize_nvfp4",
    "dequantize_mxfp8",
    "dequantize_nvfp4",
    "mxfp8_blocks_below_bf16",
    "quantize_dequantize_mxfp8",
    "quantize_dequantize_nvfp4",
    "nvfp4_tensor_scale",
    "e8m0_to_float32",
    "check_scales",
    "check_activation_scale",
    "E2M1_VALUES",
]

HIGH_PRECISION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
E4M3_MAX = 448.0
E4M3_TINY = torch.finfo(torch.float8_e4m3fn).tiny  # 2^-6, the smallest normal e4m3 value
E2M1_MAX = 6.0
E8M0_BIAS = 127
E8M0_NAN = 255
# The smallest E8M0 byte under which every e4m3 value decodes exactly to bfloat16: with a byte
# below 3, q * 2^(byte - 127) can fall under bfloat16's smallest subnormal (2^-133).
E8M0_MIN_BF16_EXACT = 3
SCALING_MODES = ("rceil", "floor")


@dataclass(frozen=True)
class Format:
    """What a block-scaled format stores. Only ``name`` crosses op schemas."""

    name: str
    qdata_dtype: torch.dtype  # storage dtype of q
    elements_per_byte: int  # 2 for packed fp4
    block_size: int  # elements along K sharing one scale
    scale_dtype: torch.dtype  # storage dtype of the block scales
    element_max: float
    has_tensor_scale: bool  # a per-tensor fp32 scale on top of the block scales

    def qdata_shape(self, rows: int, k: int) -> tuple[int, int]:
        """Shape of q for a [rows, k] high-precision tensor."""
        return rows, k // self.elements_per_byte

    def scale_shape(self, rows: int, k: int) -> tuple[int, int]:
        """Shape of the swizzled block scales for a [rows, k] tensor (padding included)."""
        return swizzled_scale_shape(rows, k // self.block_size)


MXFP8 = Format("mxfp8", torch.float8_e4m3fn, 1, 32, torch.uint8, E4M3_MAX, False)
NVFP4 = Format("nvfp4", torch.uint8, 2, 16, torch.float8_e4m3fn, E2M1_MAX, True)
FORMATS = {f.name: f for f in (MXFP8, NVFP4)}

# e2m1 code -> value; codes 8..15 are the negatives of 0..7 (code 8 is -0.0).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


# ----------------------------------------------------------------------------------------------
# The 128x4 swizzled scale layout. The one implementation in the package; kernels index it with
# the byte-offset formula in their own docstrings, and tests check both against each other.
# ----------------------------------------------------------------------------------------------


def swizzled_scale_shape(rows: int, scale_cols: int) -> tuple[int, int]:
    """[round_up(rows, 128), round_up(scale_cols, 4)]: the 2-D shape of a swizzled scale tensor."""
    return round_up(rows, 128), round_up(scale_cols, 4)


def to_blocked(s2d: torch.Tensor) -> torch.Tensor:
    """Rearrange a [R, S] scale matrix into the 128x4 swizzled layout.

    Returns a contiguous tensor of shape [round_up(R, 128), round_up(S, 4)] and the dtype of
    ``s2d`` whose bytes, read in memory order, hold scale (r, s) at offset

        (r // 128) * (S_pad // 4) * 512 + (s // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + s % 4

    Padding rows and columns are written as zero bytes. (The 2-D shape is only a container: the
    layout is defined by the byte order, which is what cuBLAS, CUTLASS and our kernels read.)
    ``check_scales`` checks a tensor claimed to be in this layout as far as its bytes allow.
    """
    if s2d.dim() != 2:
        raise ValueError(f"to_blocked: s2d must be 2-D [rows, scale_cols], got shape {tuple(s2d.shape)}")
    rows, cols = s2d.shape
    rows_pad, cols_pad = swizzled_scale_shape(rows, cols)
    padded = s2d.new_zeros(rows_pad, cols_pad)
    padded[:rows, :cols] = s2d
    # r = rb*128 + i*32 + j and s = sb*4 + c  ->  memory order (rb, sb, j, i, c)
    tiles = padded.view(rows_pad // 128, 4, 32, cols_pad // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(rows_pad, cols_pad)


def from_blocked(s: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of ``to_blocked``: the [rows, cols] scale matrix (a view, padding dropped).

    ``s`` may have any shape with round_up(rows, 128) * round_up(cols, 4) elements in the
    swizzled byte order; rows and cols are ints >= 0.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"from_blocked: {name} must be an int, got {type(value).__name__} {value!r}")
        if value < 0:
            raise ValueError(f"from_blocked: {name} must be >= 0, got {value}")
    rows_pad, cols_pad = swizzled_scale_shape(rows, cols)
    if s.numel() != rows_pad * cols_pad:
        raise ValueError(
            f"from_blocked: s must have round_up({rows}, 128) * round_up({cols}, 4) = "
            f"{rows_pad * cols_pad} elements, got {s.numel()}"
        )
    # memory order (rb, sb, j, i, c) -> (rb, i, j, sb, c); the permutation is its own inverse
    tiles = s.reshape(rows_pad // 128, cols_pad // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(rows_pad, cols_pad)[:rows, :cols]


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the reference functions and the ops (raised before any kernel runs)
# ----------------------------------------------------------------------------------------------


def check_high_precision(fn: str, name: str, x: torch.Tensor, block_size: int) -> tuple[int, int]:
    """Check a bf16/fp16/fp32 [..., K] input; return (M, K) with leading dims flattened into M."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in HIGH_PRECISION_DTYPES:
        raise TypeError(f"{fn}: {name} must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: {name} must have shape [..., M, K] (at least 2-D), got {tuple(x.shape)}")
    k = x.shape[-1]
    m = math.prod(x.shape[:-1])
    if k == 0 or k % block_size != 0:
        raise ValueError(f"{fn}: {name}.shape[-1] (K = {k}) must be a positive multiple of the block size {block_size}")
    if m == 0:
        raise ValueError(f"{fn}: {name} has M = 0 rows (shape {tuple(x.shape)}); M must be >= 1")
    return m, k


def check_quantized(
    fn: str, fmt: Format, q_name: str, q: torch.Tensor, s_name: str, s: torch.Tensor
) -> tuple[int, int]:
    """Check canonical operands (q, s) of ``fmt``; return (rows, K) of the high-precision tensor."""
    for name, t in ((q_name, q), (s_name, s)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype != fmt.qdata_dtype:
        raise TypeError(f"{fn}: {q_name} must be {fmt.qdata_dtype} ({fmt.name} qdata), got {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"{fn}: {q_name} must be 2-D [rows, K/{fmt.elements_per_byte}], got shape {tuple(q.shape)}")
    rows, k = q.shape[0], q.shape[1] * fmt.elements_per_byte
    if rows == 0:
        raise ValueError(f"{fn}: {q_name} has 0 rows (shape {tuple(q.shape)}); M must be >= 1")
    if k == 0 or k % fmt.block_size != 0:
        raise ValueError(f"{fn}: K = {k} (from {q_name}.shape {tuple(q.shape)}) must be a positive multiple of {fmt.block_size}")
    if not q.is_contiguous():
        raise ValueError(f"{fn}: {q_name} must be contiguous (row-major, K-contiguous), got strides {q.stride()}")
    if s.dtype != fmt.scale_dtype:
        raise TypeError(f"{fn}: {s_name} must be {fmt.scale_dtype} ({fmt.name} block scales), got {s.dtype}")
    rows_pad, cols_pad = fmt.scale_shape(rows, k)
    if s.numel() != rows_pad * cols_pad:
        raise ValueError(
            f"{fn}: {s_name} must hold round_up({rows}, 128) * round_up({k // fmt.block_size}, 4) = "
            f"{rows_pad * cols_pad} scales in the 128x4 swizzled layout (shape [{rows_pad}, {cols_pad}]), "
            f"got shape {tuple(s.shape)} ({s.numel()} elements)"
        )
    if not s.is_contiguous():
        raise ValueError(f"{fn}: {s_name} must be contiguous, got strides {s.stride()}")
    if s.device != q.device:
        raise ValueError(f"{fn}: {s_name} is on {s.device} but {q_name} is on {q.device}")
    return rows, k


def check_tensor_scale(fn: str, name: str, ts: torch.Tensor, device: torch.device) -> None:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a float32 tensor with one element, got {type(ts).__name__}")
    if ts.dtype != torch.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {ts.dtype}")
    if ts.numel() != 1:
        raise ValueError(f"{fn}: {name} must have exactly one element, got shape {tuple(ts.shape)}")
    if ts.device != device:
        raise ValueError(f"{fn}: {name} is on {ts.device} but the operands are on {device}")


def check_activation_amax(fn: str, amax) -> float:
    """A calibrated max |activation| given on the host: a positive finite real number."""
    if isinstance(amax, bool) or not isinstance(amax, numbers.Real):
        raise TypeError(f"{fn}: activation_amax must be a positive finite number, got {type(amax).__name__} {amax!r}")
    if not 0.0 < amax < math.inf:
        raise ValueError(f"{fn}: activation_amax must be a positive finite number, got {amax}")
    return float(amax)


def check_activation_scale(scale: torch.Tensor) -> None:
    """The checked path for a static NVFP4 activation tensor scale (the ``activation_scale`` of
    ``nvfp4_linear`` and ``NVFP4Weight``: a one-element float32 tensor, calibrated amax / 2688).

    The ops never read its value (no host sync per call), and a bad one gives silently wrong
    results: 0 makes every output 0, a negative one flips the sign of the product. This reads it
    on the host (a device sync, so call it once when the scale is made) and raises ValueError
    unless it is positive and finite.
    """
    fn = "dq_kernels.formats.check_activation_scale"
    check_tensor_scale(fn, "activation_scale", scale, getattr(scale, "device", None))
    value = scale.item()
    if not 0.0 < value < math.inf:
        raise ValueError(
            f"{fn}: activation_scale must be positive and finite (calibrated amax / 2688), got {value}"
        )


def check_scales(s: torch.Tensor, fmt: Format | str, rows: int, k: int) -> None:
    """The checked path for block scales made outside dq_kernels: raise ValueError where the bytes
    of ``s`` show that it is not the 128x4 swizzled scale tensor of a [rows, k] ``fmt`` operand.

    It reads the scales on the host (a device sync): call it once when the scales are made, not per
    call (the ops check shapes and dtypes only). Checked:

    * dtype and element count, as the ops do;
    * the padding (scale rows >= ``rows``, scale columns >= k / block_size) is all zero bytes, as
      ``to_blocked`` writes it. Scales in another order (a row-major [rows, k / block_size] matrix
      copied into the padded shape, or swizzled for other dimensions) almost always put non-zero
      bytes there;
    * NVFP4: no scale is negative (the quantizer's e4m3 block scales are positive or NaN).

    Not detectable: when rows % 128 == 0 and (k / block_size) % 4 == 0 there is no padding, and a
    row-major matrix has exactly the swizzled shape and plausible values. Make such scales with
    ``to_blocked`` (or take them from ``quantize_*``), never by reshaping.
    """
    fn = "dq_kernels.formats.check_scales"
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{fn}: s must be a torch.Tensor, got {type(s).__name__}")
    if s.dtype != fmt.scale_dtype:
        raise TypeError(f"{fn}: s must be {fmt.scale_dtype} ({fmt.name} block scales), got {s.dtype}")
    if k % fmt.block_size:
        raise ValueError(f"{fn}: k = {k} must be a multiple of the {fmt.name} block size {fmt.block_size}")
    cols = k // fmt.block_size
    rows_pad, cols_pad = fmt.scale_shape(rows, k)
    if s.numel() != rows_pad * cols_pad:
        raise ValueError(
            f"{fn}: s must hold round_up({rows}, 128) * round_up({cols}, 4) = {rows_pad * cols_pad} scales, "
            f"got shape {tuple(s.shape)}"
        )
    grid = from_blocked(s, rows_pad, cols_pad).view(torch.uint8)  # every entry, padding included
    padding = torch.cat((grid[rows:].flatten(), grid[:rows, cols:].flatten()))
    bad_padding, negative = (padding != 0).sum(), torch.zeros((), dtype=torch.int64, device=s.device)
    if fmt.name == "nvfp4":
        negative = (grid[:rows, :cols] >= 0x80).sum()
    bad_padding, negative = torch.stack((bad_padding, negative)).tolist()
    if bad_padding:
        raise ValueError(
            f"{fn}: {bad_padding} padding entries of s (scale rows >= {rows} or columns >= {cols}) are not zero: "
            "s is not in the 128x4 swizzled layout of these dimensions (row-major scales? make them with "
            "dq_kernels.to_blocked)"
        )
    if negative:
        raise ValueError(f"{fn}: {negative} NVFP4 block scales of s are negative; block scales are positive")


def check_output_dtype(fn: str, dtype: torch.dtype, name: str = "the output dtype") -> None:
    """``dtype`` (the argument ``name``) is torch.bfloat16, torch.float16 or torch.float32. The public
    op wrappers call this before the op, whose schema would otherwise reject a string or None with
    a message about ScalarType."""
    if not isinstance(dtype, torch.dtype) or dtype not in HIGH_PRECISION_DTYPES:
        hint = " (a torch.dtype, not a string)" if isinstance(dtype, str) else ""
        raise TypeError(f"{fn}: {name} must be torch.bfloat16, torch.float16 or torch.float32{hint}, got {dtype!r}")


# ----------------------------------------------------------------------------------------------
# Element and scale codecs
# ----------------------------------------------------------------------------------------------


def e8m0_to_float32(e: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes (uint8) -> float32 2^(e - 127); byte 0 is 2^-127 (a float32 subnormal), 255 NaN.

    Built from the bit pattern, not from exp2, so no device can flush 2^-127 to zero.
    """
    e32 = e.to(torch.int32)
    bits = torch.where(e32 == 0, torch.full_like(e32, 0x00400000), e32 << 23)  # 2^-127 = 2^22 * 2^-149
    bits = torch.where(e32 == E8M0_NAN, torch.full_like(e32, 0x7FC00000), bits)
    return bits.view(torch.float32)


def _float_bits_to_float32(bits: torch.Tensor, exponent_bits: int, mantissa_bits: int, ieee: bool) -> torch.Tensor:
    """A small float format's bit patterns (int32 holding the 1 + exponent_bits + mantissa_bits
    bits: sign, exponent field, mantissa) -> their float32 values, exactly. Exponent 0 is the
    subnormal mantissa x 2^(1 - bias - mantissa_bits); any other exponent e is float32 exponent
    field e + 127 - bias and the mantissa bits on top. ``ieee``: the all-ones exponent is inf / NaN
    (float16); without it that is a normal binade (float8_e4m3fn: its callers mark its NaN).
    A decode from bits, not a float conversion, so that torch.compile keeps it as written."""
    bias = 2 ** (exponent_bits - 1) - 1
    exponent, mantissa = (bits >> mantissa_bits) & (2**exponent_bits - 1), bits & (2**mantissa_bits - 1)
    field = exponent + (127 - bias)
    if ieee:
        field = torch.where(exponent == 2**exponent_bits - 1, 0xFF, field)
    normal = (field << 23) | (mantissa << (23 - mantissa_bits))
    subnormal = (mantissa.float() * 2.0 ** (1 - bias - mantissa_bits)).view(torch.int32)
    sign = (bits >> (exponent_bits + mantissa_bits)) << 31
    return (torch.where(exponent == 0, subnormal, normal) | sign).view(torch.float32)


def _exact_float32(x: torch.Tensor) -> torch.Tensor:
    """x (bf16/fp16/fp32) as float32, decoded from its 16-bit pattern for bf16 and fp16.

    Equal to ``x.float()``. Why the bits: under torch.compile, inductor computes fused bf16/fp16
    ops in float32 and may hand the next op of the same kernel the value before its rounding to
    x's dtype; the quantizers must see x exactly as it is stored, and a bitcast cannot be skipped.
    """
    if x.dtype == torch.float32:
        return x
    bits = x.view(torch.int16).to(torch.int32)
    if x.dtype == torch.bfloat16:
        return (bits << 16).view(torch.float32)
    return _float_bits_to_float32(bits & 0xFFFF, 5, 10, ieee=True)


def _divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b for float32 tensors a >= 0 and b > 0, correctly rounded, computed in float64 (a float64
    quotient of float32 operands rounds to the correctly rounded float32 one): the same bits as
    torch's float32 division on every device, and under torch.compile too, where inductor's Triton
    code divides float32 tensors approximately. The quotient comes back through abs(), a no-op on
    it: torch 2.11's inductor folds float64 -> float32 -> float64 into one conversion, which would
    drop the float32 rounding that a following ``_divide`` must see."""
    return (a.double() / b.double()).float().abs()


def _ceil_log2(d: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(d)) (int32) for finite float32 d >= 0, read off the bits; d = 0 and
    subnormals below 2^-127 give -127 or less, which every caller clamps to -127.

    This is the rounding of Blackwell's ``cvt.rp.satfinite.ue8m0x2.f32``. torchao's eager RCEIL
    takes ``ceil(torch.log2(d))`` instead; the two agree whenever log2 rounds correctly to a
    non-integer, which holds for every bf16 and fp16 input (amax / 448 then sits at least 2^-11
    relative away from a power of two). For a float32 input whose block amax lies within about
    2^-17 relative above 448 * 2^k, log2 rounds to the integer k and torchao picks a scale whose
    largest value saturates slightly; this function picks the next power of two.
    """
    bits = d.view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    normal = exponent - E8M0_BIAS + (mantissa != 0).to(torch.int32)
    subnormal = torch.where(mantissa > 0x400000, -126, -127)  # d = mantissa * 2^-149
    return torch.where(exponent == 0, subnormal, normal)


def _encode_e2m1(y: torch.Tensor) -> torch.Tensor:
    """float32 values already clamped to [-6, 6] -> e2m1 codes (uint8 in 0..15), round to nearest even.

    Each threshold is the midpoint between two neighbouring e2m1 magnitudes; ties go to the code
    with an even mantissa bit, hence ``>`` at 0.25, 1.25, 2.5, 5 and ``>=`` at 0.75, 1.75, 3.5.
    """
    a = y.abs()
    code = (
        (a > 0.25).to(torch.uint8)
        + (a >= 0.75).to(torch.uint8)
        + (a > 1.25).to(torch.uint8)
        + (a >= 1.75).to(torch.uint8)
        + (a > 2.5).to(torch.uint8)
        + (a >= 3.5).to(torch.uint8)
        + (a > 5.0).to(torch.uint8)
    )
    return code | (torch.signbit(y).to(torch.uint8) << 3)


def _decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """e2m1 codes (uint8 0..15) -> float32 values (``E2M1_VALUES[code]``, -0.0 for code 8).

    Built from the bit pattern with tensor ops only: no table tensor is made from Python values,
    since that is a host-to-device copy, which CUDA graph capture forbids. Code bits: sign (3),
    exponent (2..1), mantissa (0); exponent 0 is the subnormal 0 or 0.5, exponent e > 0 is
    2^(e - 1) * (1 + mantissa / 2), i.e. float32 exponent field e + 126 and mantissa bit 22.
    Not ``_float_bits_to_float32``: this decodes every weight of an NVFP4 GEMM where the native
    library is missing, and its uint8 field extraction and integer subnormal run in 2/3 of the time
    (184 against 254 ms for 3072 x 3072 codes on this CPU).
    """
    exponent, mantissa, sign = ((codes >> 1) & 3).to(torch.int32), (codes & 1).to(torch.int32), (codes >> 3).to(torch.int32)
    normal = ((exponent + 126) << 23) | (mantissa << 22)
    magnitude = torch.where(exponent == 0, mantissa * 0x3F000000, normal)  # 0x3F000000 = 0.5
    return (magnitude | (sign << 31)).view(torch.float32)


def _decode_e4m3(s: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn -> float32 read off the bits (exactly ``s.float()``, NaN for 0x7F / 0xFF).

    For a value that then goes to float64 (``_divide``): inductor turns ``s.float().double()`` into
    one float8 -> float64 conversion, which Triton 3.6 cannot lower (seen on the H100), so under
    torch.compile the conversion must not be a float one.
    """
    bits = s.view(torch.uint8).to(torch.int32)
    return torch.where((bits & 0x7F) == 0x7F, torch.nan, _float_bits_to_float32(bits, 4, 3, ieee=False))


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2n] codes -> [..., n] bytes, element 2i in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[..., n] bytes -> [..., 2n] codes, low nibble first."""
    return torch.stack((q & 0xF, q >> 4), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------
# Reference quantize / dequantize
# ----------------------------------------------------------------------------------------------


def quantize_mxfp8(x: torch.Tensor, scaling: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a bf16/fp16/fp32 tensor [..., K] to MXFP8 (K a multiple of 32).

    Returns ``(q, s)``: q float8_e4m3fn [M, K] (leading dims flattened into M), s uint8 E8M0 bytes
    [round_up(M, 128), round_up(K / 32, 4)] in the 128x4 swizzled layout.

    ``scaling="floor"`` is the OCP rule (scale = 2^(floor(log2(amax)) - 8)); ``"rceil"`` rounds the
    scale up so that nothing saturates (amax / 448 rounded up to a power of two, exactly: see
    ``_ceil_log2``). Both equal torchao's ``to_mx`` with ``ScaleCalculationMode.FLOOR`` / ``RCEIL``
    bit for bit (RCEIL: for every bf16 and fp16 input, and every float32 input but the corner
    ``_ceil_log2`` describes).
    """
    q, e = _quantize_mxfp8_blocks("dq_kernels.quantize_mxfp8", x, scaling)
    return q, to_blocked(e)


def _quantize_mxfp8_blocks(fn: str, x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_mxfp8`` before the swizzle: (q float8_e4m3fn [M, K], E8M0 bytes uint8 [M, K / 32])."""
    m, k = check_high_precision(fn, "x", x, MXFP8.block_size)
    if scaling not in SCALING_MODES:
        raise ValueError(f"{fn}: scaling must be one of {SCALING_MODES}, got {scaling!r}")
    blocks = _exact_float32(x).reshape(m, k // 32, 32).contiguous()  # q comes out row-major whatever x's strides
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    if scaling == "floor":
        # floor(log2(amax)) read off the float32 exponent field, minus e4m3's largest power of two (8)
        unbiased = ((amax.view(torch.int32) >> 23) & 0xFF) - E8M0_BIAS - 8
        e = (unbiased.clamp(-E8M0_BIAS, E8M0_BIAS + 1) + E8M0_BIAS).to(torch.uint8)
        e = torch.where(torch.isnan(amax), E8M0_NAN, e)
        # divide by the scale, with torchao's clamp of the divisor to the smallest normal (byte 0
        # divides by 2^-126), as a multiplication by its exact reciprocal 2^(127 - e) (e <= 247 for
        # finite scales); x / inf (NaN blocks) is x * 0
        reciprocal = e8m0_to_float32((254 - e.to(torch.int32)).clamp(0, 253).to(torch.uint8))
        y = blocks * torch.where(e == E8M0_NAN, 0.0, reciprocal)
    else:
        descale = amax / E4M3_MAX
        e = (_ceil_log2(descale).clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)
        e = torch.where(torch.isinf(descale), 254, e)
        e = torch.where(torch.isnan(descale), E8M0_NAN, e)
        reciprocal = e8m0_to_float32((254 - e.to(torch.int32)).clamp(min=0).to(torch.uint8))  # 2^(127 - e)
        reciprocal = torch.where(e == 0, 1.0, reciprocal)  # amax <= 2^-127 * 448: leave values as they are
        reciprocal = torch.where(e == E8M0_NAN, descale, reciprocal)  # NaN block stays NaN
        y = blocks * reciprocal
    q = y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(m, k)
    return q, e.view(m, k // 32)


def quantize_dequantize_mxfp8(x: torch.Tensor, scaling: str = "rceil") -> torch.Tensor:
    """x [..., K] quantized to MXFP8 and decoded: bfloat16 [M, K], bit for bit
    ``dequantize_mxfp8(*quantize_mxfp8(x, scaling), torch.bfloat16)``. Computed from the block
    scales directly (no swizzle and back), so that under torch.compile it is one chain of torch ops
    that inductor fuses into the op before it."""
    q, e = _quantize_mxfp8_blocks("dq_kernels.quantize_dequantize_mxfp8", x, scaling)
    # exact in float32, rounded once; [M, K] throughout (a [M, K / 32, 32] product viewed back as
    # [M, K] for the GEMM op made inductor keep a float32 copy of it)
    return (q.float() * e8m0_to_float32(e).repeat_interleave(32, dim=1)).to(torch.bfloat16)


def nvfp4_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """torchao's NVFP4 per-tensor scale: amax(|x|) / (448 * 6), a 0-dim float32 tensor."""
    return _exact_float32(x).abs().amax() / (E4M3_MAX * E2M1_MAX)


def quantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a bf16/fp16/fp32 tensor [..., K] to NVFP4 (K a multiple of 16).

    Returns ``(q, s, tensor_scale)``: q uint8 [M, K / 2] (two e2m1 codes per byte, first element in
    the low nibble), s float8_e4m3fn [round_up(M, 128), round_up(K / 16, 4)] swizzled,
    tensor_scale a 0-dim float32 tensor (``nvfp4_tensor_scale(x)`` when not given).
    Bit-identical to torchao's ``nvfp4_quantize(x, per_tensor_scale=tensor_scale)``.
    """
    codes, s, tensor_scale = _quantize_nvfp4_blocks("dq_kernels.quantize_nvfp4", x, tensor_scale)
    return _pack_nibbles(codes), to_blocked(s), tensor_scale


def _quantize_nvfp4_blocks(
    fn: str, x: torch.Tensor, tensor_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize_nvfp4`` before packing and swizzling: (e2m1 codes uint8 [M, K], block scales
    float8_e4m3fn [M, K / 16], the 0-dim float32 tensor scale)."""
    m, k = check_high_precision(fn, "x", x, NVFP4.block_size)
    if tensor_scale is None:
        tensor_scale = nvfp4_tensor_scale(x)
    check_tensor_scale(fn, "tensor_scale", tensor_scale, x.device)
    tensor_scale = tensor_scale.reshape(())
    blocks = _exact_float32(x).reshape(m, k // 16, 16).contiguous()
    # an all-zero tensor has tensor scale 0: divide by 1 instead, so its codes and scales are finite
    # and it decodes to zeros (torchao divides by 0 and returns NaN scales)
    divisor = torch.where(tensor_scale == 0, 1.0, tensor_scale)
    block_scale = blocks.abs().amax(dim=-1) / E2M1_MAX
    s = _divide(block_scale, divisor).clamp(E4M3_TINY, E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = _divide(_divide(torch.ones_like(divisor), divisor), _decode_e4m3(s))
    y = (blocks * reciprocal.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX)
    return _encode_e2m1(y).view(m, k), s, tensor_scale


def quantize_dequantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] quantized to NVFP4 and decoded without its tensor scale: (float16 [M, K] holding
    e2m1 x block scale, exactly; the 0-dim float32 tensor scale), bit for bit what
    ``quantize_nvfp4`` then ``dequantize_nvfp4`` with a tensor scale of 1 and dtype float16 give.
    Computed without packing or swizzling, so that under torch.compile it is one chain of torch ops
    that inductor fuses into the op before it."""
    codes, s, tensor_scale = _quantize_nvfp4_blocks("dq_kernels.quantize_dequantize_nvfp4", x, tensor_scale)
    m, k = codes.shape
    values = _decode_e2m1(codes).view(m, k // 16, 16) * s.float().unsqueeze(-1)
    return values.to(torch.float16).view(m, k), tensor_scale


def dequantize_mxfp8(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """MXFP8 canonical operands -> [M, K] tensor of ``dtype``: q * 2^(e - 127), computed exactly in
    float32 and rounded once to ``dtype``."""
    fn = "dq_kernels.dequantize_mxfp8"
    m, k = check_quantized(fn, MXFP8, "q", q, "s", s)
    check_output_dtype(fn, dtype)
    scale = e8m0_to_float32(from_blocked(s, m, k // 32))
    out = q.float().view(m, k // 32, 32) * scale.unsqueeze(-1)
    return out.view(m, k).to(dtype)


def mxfp8_blocks_below_bf16(q: torch.Tensor, s: torch.Tensor) -> int:
    """How many blocks of MXFP8 canonical operands (q float8_e4m3fn [M, K], s their swizzled E8M0
    scales) hold a nonzero element under a scale byte below ``E8M0_MIN_BF16_EXACT``: blocks whose
    bfloat16 decode may round, the edge of the Hopper kernels' exact domain
    (docs/backend-selection.md#exactness-domains). Reads both tensors once; one host sync."""
    m, k = check_quantized("dq_kernels.mxfp8_blocks_below_bf16", MXFP8, "q", q, "s", s)
    nonzero = (q.view(torch.uint8) & 0x7F).view(m, k // 32, 32).ne(0).any(-1)  # +-0 is 0x00 / 0x80
    return int((nonzero & (from_blocked(s, m, k // 32) < E8M0_MIN_BF16_EXACT)).sum())


def dequantize_nvfp4(
    q: torch.Tensor, s: torch.Tensor, tensor_scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """NVFP4 canonical operands -> [M, K] tensor of ``dtype``: (e2m1 * e4m3 block scale) * tensor_scale.

    The first product is exact in float32; the tensor scale multiplies it with one float32 rounding,
    then the result is rounded to ``dtype``.
    """
    fn = "dq_kernels.dequantize_nvfp4"
    m, k = check_quantized(fn, NVFP4, "q", q, "s", s)
    check_tensor_scale(fn, "tensor_scale", tensor_scale, q.device)
    check_output_dtype(fn, dtype)
    values = _decode_e2m1(_unpack_nibbles(q)).view(m, k // 16, 16)
    scale = from_blocked(s, m, k // 16).float()
    out = (values * scale.unsqueeze(-1)) * tensor_scale.reshape(())
    return out.view(m, k).to(dtype)
