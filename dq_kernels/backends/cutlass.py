"""The ``cutlass`` backend: the native library's CUTLASS/CuTe GEMMs, per compute capability.

- 10.0 (the ``sm100_gemm`` kernel family, built for sm_100a): ``csrc/sm100_mxfp8_gemm.cu`` and
  ``csrc/sm100_nvfp4_gemm.cu``, CUTLASS 4.2 tcgen05 block-scaled MMA (``kind::mxf8f6f4`` /
  ``kind::mxf4nvf4``) on the canonical operands as they are (the 128x4 swizzled scales are
  CUTLASS's own scale layout). Compile-verified only.
- 9.0 (the ``sm90_gemm`` family, built for sm_90a): ``csrc/sm90_mxfp8_gemm.cu``, MXFP8 only: FP8
  wgmma per 32-wide K slice with the block scales applied on the CUDA cores, exact (see the file).

out = alpha * (a @ b.T) + bias, accumulated in float32, with alpha = a_ts * b_ts for NVFP4 (read on
the device, so CUDA graphs see no host synchronization) and 1 for MXFP8. The kernels write bfloat16
or float32; a float16 output is the float32 result cast once, which is how the reference rounds it
too. The bias goes in as float32 (exact for every bias dtype; the reference adds it in float32).

Shape limits (the spec's data, matching what CUTLASS's ``can_implement`` accepts, which
``python_tests/test_sm100.py`` checks): K % 32 == 0 (NVFP4 rows of K / 2 bytes must be 16-byte
multiples for TMA; MXFP8's block is 32 anyway) and N % 8 == 0 (out rows for the TMA store).
"""

from __future__ import annotations

import torch

from .. import native
from . import base
from .base import Backend, BackendSpec, aligned_16

# The kernel family that holds this backend's code for each compute capability.
_FAMILIES = {(9, 0): native.SM90_FAMILY, (10, 0): native.SM100_FAMILY}
SM90_CONFIG = "sm90_128x128x128_ws2"  # the one tile of csrc/sm90_mxfp8_gemm.cu: 2 consumer warpgroups


def _kernel_output(m: int, n: int, out_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The [m, n] output buffer the kernels write: out_dtype, or float32 for a float16 output."""
    dtype = torch.float32 if out_dtype == torch.float16 else out_dtype
    return torch.empty(m, n, dtype=dtype, device=device)


def _float32_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else aligned_16(bias.to(torch.float32).contiguous())


class CutlassBackend(Backend):
    spec = BackendSpec(
        name="cutlass",
        description=(
            "native CuTe/CUTLASS GEMMs: sm_90a exact MXFP8 (FP8 wgmma + per-32 promotion); sm_100a "
            "CUTLASS 4.2 block-scaled tcgen05 MXFP8/NVFP4 (compile-verified only)"
        ),
        ops=("mxfp8_mm", "nvfp4_mm"),
        capabilities=((9, 0), (10, 0)),
        op_capabilities=(("nvfp4_mm", ((10, 0),)),),
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
                "DQ_KERNELS_CUDA_ARCHS must include 90a or 100a)"
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
        if torch.cuda.is_available() and base.capability(torch.device("cuda")) == (9, 0):
            return SM90_CONFIG
        return native.sm100_mm_plan(fmt, m, n, k).config

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        operands = (aligned_16(a_q), aligned_16(a_s), aligned_16(b_q), aligned_16(b_s), _float32_bias(bias))
        if base.capability(a_q.device) == (9, 0):
            out = torch.empty(a_q.shape[0], b_q.shape[0], dtype=out_dtype, device=a_q.device)
            native.sm90_mxfp8_mm(*operands, out)
            return out
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        native.sm100_mxfp8_mm(*operands, out)
        return out.to(out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        a_ts, b_ts = a_ts.reshape(()), b_ts.reshape(())
        native.sm100_nvfp4_mm(
            aligned_16(a_q), aligned_16(a_s), a_ts, aligned_16(b_q), aligned_16(b_s), b_ts, _float32_bias(bias), out
        )
        return out.to(out_dtype)
