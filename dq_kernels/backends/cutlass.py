"""The ``cutlass`` backend: CUTLASS 4.2 block-scaled GEMMs from the native library.

For now the Blackwell kernels only (compute capability 10.0, built for sm_100a as the
``sm100_gemm`` kernel family): ``csrc/sm100_mxfp8_gemm.cu`` and ``csrc/sm100_nvfp4_gemm.cu``,
tcgen05 block-scaled MMA (``kind::mxf8f6f4`` / ``kind::mxf4nvf4``) on the canonical operands as
they are (the 128x4 swizzled scales are CUTLASS's own scale layout), reached through
``dq_kernels.native.sm100_{mxfp8,nvfp4}_mm``.

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
from .base import Backend, BackendSpec, aligned_16



def _kernel_output(m: int, n: int, out_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The [m, n] output buffer the kernels write: out_dtype, or float32 for a float16 output."""
    dtype = torch.float32 if out_dtype == torch.float16 else out_dtype
    return torch.empty(m, n, dtype=dtype, device=device)


def _float32_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else aligned_16(bias.to(torch.float32).contiguous())


class CutlassBackend(Backend):
    spec = BackendSpec(
        name="cutlass",
        description="CUTLASS 4.2 block-scaled tcgen05 GEMMs for sm_100a (1-SM 128x128 and 2-SM 256x128 tiles)",
        ops=("mxfp8_mm", "nvfp4_mm"),
        capabilities=((10, 0),),
        n_multiple=8,
        k_multiple=32,
    )

    def availability(self):
        ok, why = native.status()
        if not ok:
            return False, f"the native library is unavailable: {why}"
        if not native.build_info()["families"].get(native.SM100_FAMILY):
            return False, (
                f"the native library was built without the {native.SM100_FAMILY} kernel family "
                "(DQ_KERNELS_CUDA_ARCHS must include 100a)"
            )
        return True, ""

    def kernel_config(self, fmt, m, n, k):
        return native.sm100_mm_plan(fmt, m, n, k).config

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        native.sm100_mxfp8_mm(
            aligned_16(a_q), aligned_16(a_s), aligned_16(b_q), aligned_16(b_s), _float32_bias(bias), out
        )
        return out.to(out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        out = _kernel_output(a_q.shape[0], b_q.shape[0], out_dtype, a_q.device)
        a_ts, b_ts = a_ts.reshape(()), b_ts.reshape(())
        native.sm100_nvfp4_mm(
            aligned_16(a_q), aligned_16(a_s), a_ts, aligned_16(b_q), aligned_16(b_s), b_ts, _float32_bias(bias), out
        )
        return out.to(out_dtype)
