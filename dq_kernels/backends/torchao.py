"""TorchAO's stock kernels, fed from our canonical operands without re-quantizing (for comparison).

* MXFP8: cuBLAS block-scaled ``torch._scaled_mm`` (torchao ``KernelPreference.AUTO``) on compute
  capability >= 10.0; torchao's ``EMULATED`` path (dequantize both operands to the output dtype,
  then ``torch.mm``) elsewhere, CPU included.
* NVFP4: torchao's W4A4 ``_scaled_mm`` path on compute capability >= 10.0; elsewhere torchao's
  weight-only path (it refuses NVFP4 activations below sm_100): the activation is dequantized by
  us and ``F.linear`` runs torchao's weight dequantize + matmul. ``nvfp4_weight_only_mm`` (W4A16)
  is that weight-only path on any device.
* quantize: torchao's ``to_mx`` / ``nvfp4_quantize``, with its scales put into our swizzled layout.

torchao is imported on first use, never at import time.
"""

from __future__ import annotations


import torch

from .. import formats
from .base import OPS, Backend, BackendSpec, capability, installed


def _blackwell(device: torch.device) -> bool:
    return device.type == "cuda" and capability(device) >= (10, 0)


class TorchAOBackend(Backend):
    spec = BackendSpec(
        name="torchao",
        description="TorchAO 0.18 stock kernels: cuBLAS MX/NVFP4 on sm_100+, EMULATED / weight-only elsewhere",
        ops=OPS,
        cpu=True,
        auto=False,
    )

    def availability(self):
        if not installed("torchao"):
            return False, "torchao is not installed (pip install 'torchao>=0.18,<0.19')"
        return True, ""

    def kernel_config(self, fmt, m, n, k):
        # Called per benchmark row only; the device is the current CUDA device.
        on_blackwell = torch.cuda.is_available() and _blackwell(torch.device("cuda"))
        if on_blackwell:
            return "cuBLAS _scaled_mm"
        return "EMULATED" if fmt == "mxfp8" else "weight-only (dequantize + F.linear)"

    def quantize_mxfp8(self, x, scaling):
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx

        m, k = x.numel() // x.shape[-1], x.shape[-1]
        # torchao's to_mx takes bf16/fp32 only; fp16 -> fp32 is exact.
        x2 = x.reshape(m, k)
        x2 = (x2.float() if x2.dtype == torch.float16 else x2).contiguous()
        e, q = to_mx(x2, torch.float8_e4m3fn, 32, ScaleCalculationMode[scaling.upper()])
        return q, formats.to_blocked(e.view(torch.uint8))

    def quantize_nvfp4(self, x, tensor_scale):
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

        m, k = x.numel() // x.shape[-1], x.shape[-1]
        x2 = x.reshape(m, k)
        x2 = (x2.float() if x2.dtype == torch.float16 else x2).contiguous()
        if tensor_scale is None:
            tensor_scale = formats.nvfp4_tensor_scale(x)
        tensor_scale = tensor_scale.reshape(())
        s, q = nvfp4_quantize(x2, 16, tensor_scale)
        return q, formats.to_blocked(s), tensor_scale

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        from torchao.prototype.mx_formats.config import KernelPreference
        from torchao.prototype.mx_formats.mx_tensor import MXTensor

        if _blackwell(a_q.device):
            preference, mm_dtype = KernelPreference.AUTO, torch.bfloat16  # cuBLAS writes bf16
        else:
            preference, mm_dtype = KernelPreference.EMULATED, out_dtype

        def wrap(q, s):
            return MXTensor(q, s.view(torch.float8_e8m0fnu), torch.float8_e4m3fn, 32, mm_dtype, preference, None, True)

        out = torch.mm(wrap(a_q, a_s), wrap(b_q, b_s).t())
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.to(out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

        def wrap(q, s, ts, dtype):
            return NVFP4Tensor(q, s, 16, dtype, per_tensor_scale=ts.reshape(()), is_swizzled_scales=True)

        if _blackwell(a_q.device):
            out = torch.mm(wrap(a_q, a_s, a_ts, torch.bfloat16), wrap(b_q, b_s, b_ts, torch.bfloat16).t())
            if bias is not None:
                out = out + bias.to(out.dtype)
            return out.to(out_dtype)
        return self.nvfp4_weight_only_mm(formats.dequantize_nvfp4(a_q, a_s, a_ts, out_dtype), b_q, b_s, b_ts, bias)

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias):
        """torchao's NVFP4WeightOnlyConfig path: F.linear on an NVFP4Tensor weight."""
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

        weight = NVFP4Tensor(b_q, b_s, 16, a.dtype, per_tensor_scale=b_ts.reshape(()), is_swizzled_scales=True)
        return torch.nn.functional.linear(a, weight, None if bias is None else bias.to(a.dtype))
