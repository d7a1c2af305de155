"""The reference backend: dequantize, float32 matmul (TF32 off), cast. Any device; the oracle of
every test. On CUDA, dequantization runs the native CUDA kernels when the library is built for the
device (bit-identical to the pure-torch decode in ``dq_kernels.formats``). It runs the GEMMs on a
decoded activation too (``mxfp8_mm_decoded``, ``nvfp4_mm_decoded``: the same products wherever the
decode is exact, as it is but for MXFP8 scale bytes below 3) wherever they are named, but never asks
for them (``takes_decoded_activation`` stays False); its decoded casts are ``formats``' own."""

from __future__ import annotations

import contextlib

import torch

from .. import formats, native
from .base import OPS, Backend, BackendSpec


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Force true float32 matmuls inside the block (no TF32 on CUDA, no bf16 on CPU's oneDNN),
    whatever torch.set_float32_matmul_precision says."""
    settings = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, saved):
            s.fp32_precision = value


def _use_native(q: torch.Tensor, alignment: int) -> bool:
    """Whether the native kernel can decode q (built for its GPU, q's address vector-aligned)."""
    return (
        q.is_cuda and q.data_ptr() % alignment == 0 and native.status()[0] and native.supports_device(q.device)[0]
    )


def dequantize_mxfp8(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Validated canonical MXFP8 operands -> [M, K] of ``dtype`` (native kernel on CUDA if built)."""
    if not _use_native(q, 16):
        return formats.dequantize_mxfp8(q, s, dtype)
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    native.dequantize_mxfp8(q, s, out, checked=False)
    return out


def dequantize_nvfp4(q: torch.Tensor, s: torch.Tensor, ts: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Validated canonical NVFP4 operands -> [M, K] of ``dtype`` (native kernel on CUDA if built);
    ts None: e2m1 x block scale alone (exact in every dtype)."""
    if not _use_native(q, 8):
        ts = torch.ones((), dtype=torch.float32, device=q.device) if ts is None else ts
        return formats.dequantize_nvfp4(q, s, ts, dtype)
    out = torch.empty(q.shape[0], q.shape[1] * 2, dtype=dtype, device=q.device)
    native.dequantize_nvfp4(q, s, ts, out, checked=False)
    return out


def _matmul_epilogue(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype):
    with _ieee_fp32_matmul():
        out = a @ b.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias) -> torch.Tensor:
    """The reference W4A16 product (also what the kernel backends run for a float32 activation)."""
    b = dequantize_nvfp4(b_q, b_s, b_ts, torch.float32)
    return _matmul_epilogue(a.float(), b, bias, a.dtype)


class ReferenceBackend(Backend):
    spec = BackendSpec(
        name="reference",
        description="dequantize to float32, float32 matmul, cast (the oracle; CUDA dequantize kernels when built)",
        ops=OPS,
        cpu=True,
    )

    def quantize_mxfp8(self, x, scaling):
        return formats.quantize_mxfp8(x, scaling)

    def quantize_nvfp4(self, x, tensor_scale):
        return formats.quantize_nvfp4(x, tensor_scale)

    def can_quantize_dequantize(self, fmt):
        return True

    def quantize_dequantize_mxfp8(self, x, scaling):
        return formats.quantize_dequantize_mxfp8(x, scaling)

    def quantize_dequantize_nvfp4(self, x, tensor_scale):
        return formats.quantize_dequantize_nvfp4(x, tensor_scale)

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        a = dequantize_mxfp8(a_q, a_s, torch.float32)
        b = dequantize_mxfp8(b_q, b_s, torch.float32)
        return _matmul_epilogue(a, b, bias, out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        a = dequantize_nvfp4(a_q, a_s, a_ts, torch.float32)
        b = dequantize_nvfp4(b_q, b_s, b_ts, torch.float32)
        return _matmul_epilogue(a, b, bias, out_dtype)

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias):
        return nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias)

    def mxfp8_mm_decoded(self, a, b_q, b_s, bias, out_dtype):
        b = dequantize_mxfp8(b_q, b_s, torch.float32)
        return _matmul_epilogue(a.float(), b, bias, out_dtype)

    def nvfp4_mm_decoded(self, a, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        a = a.float() * a_ts.reshape(())  # (e2m1 x block scale) x tensor scale, as dequantize_nvfp4 rounds it
        b = dequantize_nvfp4(b_q, b_s, b_ts, torch.float32)
        return _matmul_epilogue(a, b, bias, out_dtype)
