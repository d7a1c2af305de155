"""The ``cutlass`` backend: the native library's GEMMs (CUTLASS/CuTe and plain CUDA), per compute capability,
and its activation casts.

- 10.0 and 10.3 (the ``sm100_gemm`` kernel family, built for sm_100f, one cubin for both): ``csrc/sm100_mxfp8_gemm.cu`` and
  ``csrc/sm100_nvfp4_gemm.cu``, CUTLASS 4.2 tcgen05 block-scaled MMA (``kind::mxf8f6f4`` /
  ``kind::mxf4nvf4``) on the canonical operands as they are (the 128x4 swizzled scales are
  CUTLASS's own scale layout). Compile-verified only.
- 9.0 (the ``sm90_gemm`` family, built for sm_90a), MXFP8, NVFP4 W4A4 and W4A16:
  - M <= 64: ``csrc/sm90_skinny_gemm.cu``: mma.sync with the weight streamed from global memory
    and decoded exactly in registers (the weight read is the cost). ``auto`` takes
    ``triton_sm90`` instead for some M up to 64 (``backends.sm90_skinny_best_max_m``).
  - M > 64: ``csrc/sm90_mixed_gemm.cu``: bf16/f16 wgmma with the weight decoded exactly in
    registers as its register operand. It takes the activation decoded: MXFP8 as bf16, NVFP4 as
    f16 without its tensor scale (which the kernel applies in its epilogue). ``mxfp8_mm`` /
    ``nvfp4_mm`` decode their quantized activation with the native dequantize kernel first; the
    linear ops hand over the cast kernel's one-pass decode instead (``*_mm_decoded``,
    ``takes_decoded_activation``); a W4A16 activation goes in as it is.
  - A quantized Linear (``fuses_linear``): ``mxfp8_linear`` / ``nvfp4_linear`` are one native call
    (csrc/sm90_linear.cu), the CUDA cast and the GEMM enqueued back to back, bit for bit the cast
    followed by ``mxfp8_mm`` / ``nvfp4_mm``: at M <= ``QUANTIZING_SKINNY_MAX_M`` one launch (the
    skinny kernel quantizes a bf16/f16 activation itself; for weights of at most
    ``QUANTIZING_SKINNY_MAX_WEIGHT`` elements), up to M = 64 the cast and the skinny
    kernel, above it the one-pass decoded cast and the mixed-input kernel (``linear_kernel``).
  NVFP4 is exact up to accumulation order; MXFP8 too unless a scale byte below 3 meets nonzero data
  (the decoded value falls below bf16's subnormals; the skinny kernel's bound is in its file).

The ops check every operand before a backend runs (and the weight classes check their weight once),
so this backend calls the sm_90a kernels with ``checked=False``: the native wrappers' own checks
would repeat them on every call of a model's Linear.

out = alpha * (a @ b.T) + bias, accumulated in float32, with alpha = a_ts * b_ts for NVFP4 (read on
the device, so CUDA graphs see no host synchronization) and 1 for MXFP8; W4A16 returns a's dtype
(a float32 activation is computed by the reference path). The sm_90a kernels read the bias in its
own dtype as float32 (exact; the reference adds it in float32 too), the sm_100a ones take it
converted to float32. Output: the sm_90a kernels write bfloat16,
float16 or float32; the sm_100a kernels bfloat16 or float32, and a float16 output is their float32
result cast once, which is how the reference rounds it too.

Shape limits (the spec's data): K % 32 == 0 and N % 8 == 0 for both; for sm_100a these match what
CUTLASS's ``can_implement`` accepts (``python_tests/test_sm100.py`` checks it: NVFP4 rows of K / 2
bytes must be 16-byte multiples for TMA, out rows for the TMA store). On 9.0 the kernels' int
indexing bounds M and N near 2^31 (dq_kernels.h), far beyond any model layer.

The casts (``quantize_mxfp8``, ``quantize_nvfp4`` and their one-pass decodes for the mixed-input
kernel) are ``csrc/cast.cu``: plain CUDA built for every arch of the library, bit-identical to
``dq_kernels.formats`` (on CUDA tensors).
"""

from __future__ import annotations

import torch

from .. import formats, native
from . import base
from . import reference
from .base import Backend, BackendSpec, BackendUnavailableError, aligned_16, cast_input, float32_bias

# The kernel family that holds this backend's code for each compute capability.
_FAMILIES = {(9, 0): native.SM90_FAMILY, (10, 0): native.SM100_FAMILY, (10, 3): native.SM100_FAMILY}

# Where a Linear on 9.0 runs the skinny kernel that quantizes its bf16/f16 activation itself (one
# launch instead of the cast's and the GEMM's): up to QUANTIZING_SKINNY_MAX_M rows and a weight of
# at most QUANTIZING_SKINNY_MAX_WEIGHT[format] elements. Every CTA of that kernel quantizes the
# whole activation, so its work grows with M (NVFP4: about 20 instructions per element, 5x the
# weight decode's per chunk at M = 16) and with the CTA count (N), while what it saves does not:
# the cast kernel, whose end the GEMM launched after it overlaps (a programmatic dependent launch).
# Measured on the H100 at M = 1 (docs/skinny-kernels.md), quantizing vs cast + GEMM: MXFP8 wins
# up to 3072 x 9216 (23.9 vs 28.1 us) and loses from 12288 x 3072 on; NVFP4 wins at 3072 x 3072
# and loses from 3072 x 9216 on (18.0 vs 15.3 us). From M = 2 on it loses at most shapes.
QUANTIZING_SKINNY_MAX_M = 1
QUANTIZING_SKINNY_MAX_WEIGHT = {"mxfp8": 1 << 25, "nvfp4": 1 << 24}


def _on_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and base.capability(device) == (9, 0)


def _check_decoded_mm_device(op: str, device: torch.device) -> None:
    """The GEMMs on a decoded activation are the 9.0 mixed-input kernel's: elsewhere a
    BackendUnavailableError naming what to use instead (the ops name this backend only when asked to)."""
    if not _on_hopper(device):
        where = device if device.type != "cuda" else f"{device} (sm_{''.join(map(str, base.capability(device)))})"
        raise BackendUnavailableError(
            f"dq_kernels backend 'cutlass' runs {op} on sm_90 only (the Hopper mixed-input kernel), not on {where}; "
            "name backend='reference' or leave the choice to auto"
        )


def _skinny(device: torch.device, m: int) -> bool:
    """Whether this call runs csrc/sm90_skinny_gemm.cu."""
    return _on_hopper(device) and m <= native.SM90_SKINNY_MAX_M


def skinny_config(m: int) -> str:
    """The skinny kernel's tile, for the benchmark row: 16-row weight groups (one or two per warp)
    by the activation rows padded to 8, 16, 32 or 64, on mma.sync m16n8k16."""
    tokens = 8
    while tokens < m:
        tokens *= 2
    return f"sm90_skinny_16x{tokens}_mma16816"


def mixed_config(m: int, n: int, k: int) -> str:
    """The mixed-input kernel's tile, for the benchmark row: 128 weight rows (two consumer
    warpgroups) by the token tile it picks for the shape, 64 of K per stage, wgmma m64nTk16, and
    how it shares tiles along K, if it does: each of the last wave's tiles in parts (`_split`
    tiles `x` parts) or the last waves' tiles among one wave of CTAs (`_streamk` tiles `on` CTAs)."""
    plan = native.sm90_mixed_plan(m, n, k)
    shared = ""
    if plan.parts:
        shared = f"_split{plan.shared_tiles}x{plan.parts}"
    elif plan.shared_tiles:
        shared = f"_streamk{plan.shared_tiles}on{plan.shared_ctas}"
    return f"sm90_mixed_128x{plan.tokens}x64_wgmma{shared}"


def _decoded_activation(fmt: str, a_q: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """A quantized activation [M, K] decoded exactly for the mixed-input kernel by the native
    dequantize kernel: MXFP8 to bfloat16, NVFP4 to float16 without its tensor scale."""
    if fmt == "mxfp8":
        a = torch.empty(a_q.shape, dtype=torch.bfloat16, device=a_q.device)
        native.dequantize_mxfp8(a_q, a_s, a, checked=False)
        return a
    a = torch.empty(a_q.shape[0], 2 * a_q.shape[1], dtype=torch.float16, device=a_q.device)
    native.dequantize_nvfp4(a_q, a_s, None, a, checked=False)  # no tensor scale: the GEMM applies it
    return a


def linear_kernel(fmt: str, m: int, n: int, k: int, dtype: torch.dtype) -> str:
    """The kernel a Linear of m rows with an activation of ``dtype`` and a weight [n, k] of ``fmt``
    ("mxfp8" or "nvfp4") runs on 9.0 after its cast (``native.SM90_LINEAR_KERNELS``)."""
    small = n * k <= QUANTIZING_SKINNY_MAX_WEIGHT[fmt]
    if m <= QUANTIZING_SKINNY_MAX_M and small and dtype != torch.float32:
        return "quantizing_skinny"
    return "skinny" if m <= native.SM90_SKINNY_MAX_M else "mixed"


def _linear_input(kernel: str, x: torch.Tensor) -> torch.Tensor:
    """x [M, K] as the one-call Linear's ``kernel`` reads it (``linear_kernel``): contiguous and
    16-byte aligned for the quantizing skinny kernel, else as the casts read it."""
    return aligned_16(x.contiguous()) if kernel == "quantizing_skinny" else cast_input(x)


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the sm_90a kernels read it: None, or [N] in its own dtype, contiguous, 16-byte aligned."""
    return None if bias is None else aligned_16(bias.contiguous())


def _kernel_output(m: int, n: int, out_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The [m, n] output buffer the kernels write: out_dtype, or float32 for a float16 output on
    sm_100a (whose kernels write no float16; the sm_90a kernel does)."""
    dtype = torch.float32 if out_dtype == torch.float16 and base.capability(device) != (9, 0) else out_dtype
    return torch.empty(m, n, dtype=dtype, device=device)


class CutlassBackend(Backend):
    spec = BackendSpec(
        name="cutlass",
        description=(
            "native GEMMs: sm_90a MXFP8/NVFP4/W4A16 with the weight decoded exactly in registers (M <= 64: "
            "mma.sync streaming the weight; above: bf16/f16 wgmma, weight as the register operand); sm_100f "
            "CUTLASS 4.2 block-scaled tcgen05 MXFP8/NVFP4 (compile-verified only); CUDA activation casts"
        ),
        ops=("quantize_mxfp8", "quantize_nvfp4", "mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm"),
        capabilities=((9, 0), (10, 0), (10, 3)),
        op_capabilities=(("nvfp4_weight_only_mm", ((9, 0),)),),
        n_multiple=8,
        k_multiple=32,
    )

    def availability(self):
        ok, why = native.status()
        if not ok:
            return False, f"the native library is unavailable: {why}"
        if not any(native.build_info()["families"].get(family) for family in _FAMILIES.values()):
            return False, (
                f"the native library was built without GEMM kernels (families {', '.join(_FAMILIES.values())}; "
                "DQ_KERNELS_CUDA_ARCHS must include 90a or 100f)"
            )
        return True, ""

    def availability_on(self, device):
        ok, why = self.availability()
        if not ok or device.type != "cuda":
            return ok, why
        family = _FAMILIES.get(base.capability(device))
        if family is not None and not native.build_info()["families"].get(family):
            return False, f"the native library was built without the {family} kernel family for {device}"
        return True, ""

    def kernel_config(self, fmt, m, n, k):
        """The config for the current CUDA device (sm_90a: the skinny or the mixed-input kernel's
        tile), else sm_100a's."""
        if torch.cuda.is_available() and _on_hopper(torch.device("cuda", torch.cuda.current_device())):
            return skinny_config(m) if m <= native.SM90_SKINNY_MAX_M else mixed_config(m, n, k)
        return native.sm100_mm_plan(fmt, m, n, k).config

    def takes_decoded_activation(self, op, device, m):
        return _on_hopper(device) and m > native.SM90_SKINNY_MAX_M

    def fuses_linear(self, fmt, device, m, dtype):
        return _on_hopper(device)

    def linear_launcher(self, fmt, device, m, dtype, b_q, b_s, bias, *, scaling="rceil", b_ts=None,
                        activation_scale=None):
        """On 9.0 (``fuses_linear``): the one-call Linear (csrc/sm90_linear.cu) of the kernel
        ``linear_kernel`` picks for m rows of ``dtype`` and this weight, its arguments made once
        (``native.sm90_linear_launcher``); a call makes the output and, unless x is contiguous and
        16-byte aligned, x [M, K] as that kernel reads it. It holds the bias and tensor scales, not
        b_q and b_s: the caller keeps those alive while it uses the launcher."""
        if not _on_hopper(device) or b_q.data_ptr() % 16 or b_s.data_ptr() % 16 or _bias(bias) is not bias:
            return None  # operands the kernels cannot read as they are: the methods below copy them per call
        n, k = b_q.shape[0], b_q.shape[1] * formats.FORMATS[fmt].elements_per_byte
        kernel = linear_kernel(fmt, m, n, k, dtype)
        small = (bias, b_ts, activation_scale)  # held by run; b_q and b_s are the caller's to keep
        launch = native.sm90_linear_launcher(fmt, kernel, dtype, m, device, b_q, b_s, bias, scaling=scaling,
                                             b_ts=b_ts, activation_scale=activation_scale)

        def run(x):
            out = x.new_empty((*x.shape[:-1], n))
            if not (x.is_contiguous() and x.data_ptr() % 16 == 0):  # else every kernel reads x as it is
                x = _linear_input(kernel, x.reshape(m, x.shape[-1]))
            launch(x, out)
            return out

        run.small_operands = small

        return run

    def mxfp8_linear(self, x, b_q, b_s, bias, scaling):
        """mxfp8_mm(*quantize_mxfp8(x, scaling), b_q, b_s, bias, x.dtype) in one native call, for x
        [M, K] on 9.0 (``fuses_linear``; ``linear_kernel`` picks the GEMM)."""
        b_q, b_s, bias = aligned_16(b_q), aligned_16(b_s), _bias(bias)  # alive through the call
        return self.linear_launcher("mxfp8", x.device, x.shape[0], x.dtype, b_q, b_s, bias, scaling=scaling)(x)

    def nvfp4_linear(self, x, b_q, b_s, b_ts, activation_scale, bias):
        """nvfp4_mm(*quantize_nvfp4(x, activation_scale), b_q, b_s, b_ts, bias, x.dtype) in one
        native call, for x [M, K] on 9.0 (``fuses_linear``); a None activation_scale: the dynamic
        one, computed in the same call."""
        b_q, b_s, bias = aligned_16(b_q), aligned_16(b_s), _bias(bias)  # alive through the call
        return self.linear_launcher("nvfp4", x.device, x.shape[0], x.dtype, b_q, b_s, bias, b_ts=b_ts,
                                    activation_scale=activation_scale)(x)

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        if _on_hopper(a_q.device) and not _skinny(a_q.device, a_q.shape[0]):
            return self.mxfp8_mm_decoded(_decoded_activation("mxfp8", aligned_16(a_q), a_s), b_q, b_s, bias, out_dtype)
        a_q, a_s, b_q, b_s = aligned_16(a_q), aligned_16(a_s), aligned_16(b_q), aligned_16(b_s)
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        if _skinny(a_q.device, a_q.shape[0]):
            native.sm90_mxfp8_skinny_mm(a_q, a_s, b_q, b_s, _bias(bias), out, checked=False)
        else:
            native.sm100_mxfp8_mm(a_q, a_s, b_q, b_s, float32_bias(bias), out)
        return out.to(out_dtype)

    def mxfp8_mm_decoded(self, a, b_q, b_s, bias, out_dtype):
        """mxfp8_mm on 9.0 above the skinny range from the activation's exact bf16 decode a [M, K]."""
        _check_decoded_mm_device("mxfp8_mm_decoded", a.device)
        a, b_q, b_s, bias = aligned_16(a.contiguous()), aligned_16(b_q), aligned_16(b_s), _bias(bias)
        out = a.new_empty(a.shape[0], b_q.shape[0], dtype=out_dtype)
        native.sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, out, checked=False)
        return out

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        if _on_hopper(a_q.device) and not _skinny(a_q.device, a_q.shape[0]):
            a = _decoded_activation("nvfp4", aligned_16(a_q), a_s)
            return self.nvfp4_mm_decoded(a, a_ts, b_q, b_s, b_ts, bias, out_dtype)
        a_q, a_s, b_q, b_s = aligned_16(a_q), aligned_16(a_s), aligned_16(b_q), aligned_16(b_s)
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        if _skinny(a_q.device, a_q.shape[0]):
            native.sm90_nvfp4_skinny_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, _bias(bias), out, checked=False)
        else:
            native.sm100_nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, float32_bias(bias), out)
        return out.to(out_dtype)

    def nvfp4_mm_decoded(self, a, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        """nvfp4_mm on 9.0 above the skinny range from the activation's e2m1 x block scale values
        a [M, K] float16 (its tensor scale a_ts apart)."""
        _check_decoded_mm_device("nvfp4_mm_decoded", a.device)
        a, b_q, b_s, bias = aligned_16(a.contiguous()), aligned_16(b_q), aligned_16(b_s), _bias(bias)
        out = a.new_empty(a.shape[0], b_q.shape[0], dtype=out_dtype)
        native.sm90_nvfp4_mixed_mm(a, b_q, b_s, a_ts, b_ts, bias, out, checked=False)
        return out

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias):
        if a.dtype == torch.float32:  # the kernels' MMAs take bf16/fp16
            return reference.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)
        a, b_q, b_s, bias = aligned_16(a.contiguous()), aligned_16(b_q), aligned_16(b_s), _bias(bias)
        out = a.new_empty(a.shape[0], b_q.shape[0])
        if _skinny(a.device, a.shape[0]):
            native.sm90_nvfp4_w4a16_skinny_mm(a, b_q, b_s, b_ts, bias, out, checked=False)
        else:
            native.sm90_nvfp4_mixed_mm(a, b_q, b_s, None, b_ts, bias, out, checked=False)
        return out

    def quantize_mxfp8(self, x, scaling):
        x = cast_input(x)
        m, k = x.shape
        q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
        s = torch.empty(formats.MXFP8.scale_shape(m, k), dtype=torch.uint8, device=x.device)
        native.quantize_mxfp8(x, scaling, q, s, checked=False)
        return q, s

    def quantize_nvfp4(self, x, tensor_scale):
        x = cast_input(x)
        m, k = x.shape
        q = torch.empty(formats.NVFP4.qdata_shape(m, k), dtype=torch.uint8, device=x.device)
        s = torch.empty(formats.NVFP4.scale_shape(m, k), dtype=torch.float8_e4m3fn, device=x.device)
        ts_out = torch.empty((), dtype=torch.float32, device=x.device)
        native.quantize_nvfp4(x, tensor_scale, q, s, ts_out, checked=False)
        return q, s, ts_out

    def can_quantize_dequantize(self, fmt):
        return True

    def quantize_dequantize_mxfp8(self, x, scaling):
        """x [..., K] rounded to MXFP8 and decoded: bfloat16 [M, K] (formats.dequantize_mxfp8 of
        formats.quantize_mxfp8), one pass."""
        x = cast_input(x)
        out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        native.quantize_dequantize_mxfp8(x, scaling, out, checked=False)
        return out

    def quantize_dequantize_nvfp4(self, x, tensor_scale):
        """x [..., K] rounded to NVFP4 and decoded without its tensor scale: (float16 [M, K], the 0-dim
        float32 tensor scale), one pass (two with a dynamic tensor scale)."""
        x = cast_input(x)
        out = torch.empty(x.shape, dtype=torch.float16, device=x.device)
        ts_out = torch.empty((), dtype=torch.float32, device=x.device)
        native.quantize_dequantize_nvfp4(x, tensor_scale, out, ts_out, checked=False)
        return out, ts_out
