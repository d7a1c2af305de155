"""The ``decode_cublas`` backend: decode the weight into a temporary 16-bit buffer, then a dense GEMM.

The exact alternative a user could write with torch alone, kept as a real backend (``auto`` takes
it for MXFP8 at large M on 9.0, where it beats the mixed-input kernel: docs/backend-selection.md) and
as the bar every fused kernel must clear. For a weight b [N, K] and an
activation a [M, K]:

1. The weight is decoded into a temporary [N, K] buffer by the native dequantize kernel (the
   pure-torch decode of ``dq_kernels.formats`` on the CPU, or where the library is not built):
   MXFP8 to bfloat16; NVFP4 to e2m1 x block scale, without its tensor scale, in float16 (W4A4) or
   the activation's dtype (W4A16).
2. ``mxfp8_mm`` / ``nvfp4_mm`` decode their quantized activation the same way (MXFP8 to bfloat16,
   NVFP4 to float16 without its tensor scale). The linear ops hand over the cast kernel's one-pass
   decode instead (``takes_decoded_activation``, ``*_mm_decoded``), as for the ``cutlass`` backend.
3. ``torch.mm`` (cuBLAS on CUDA) multiplies the two decoded operands, accumulating in float32.

Epilogue, out = alpha * (a @ b.T) + bias with alpha = a_ts * b_ts for NVFP4, b_ts for W4A16 and 1
for MXFP8, as the reference and the native kernels compute it:

- MXFP8 with a bfloat16 output and no bias or a bfloat16 bias: cuBLAS writes the output itself
  (``torch.mm`` / ``torch.addmm``: the bias added to the float32 sums, one rounding), with
  cuBLAS's reduced-precision split-K reductions switched off for the call.
- Every other case (NVFP4, W4A16, a float16 or float32 output, a bias of another dtype): cuBLAS
  writes the float32 product [M, N] (``torch.mm(..., out_dtype=torch.float32)``), then one
  elementwise pass applies alpha and the bias in float32 and rounds once to the output dtype. (The
  tensor scales are device tensors, so alpha cannot go into cuBLAS without a host synchronization.)
- A float32 W4A16 activation: the weight is decoded to float32 and the product is a float32 GEMM
  with TF32 off.

Exact domain (results equal the reference up to the float32 accumulation order):

- NVFP4 (W4A4 and W4A16): always. e2m1 x e4m3 has at most 5 significant bits and lies in
  [2^-10, 2688], so it is exact in float16 and bfloat16. The reference multiplies each element by
  its tensor scale before the product (one float32 rounding per element), this backend the float32
  sums after it: the results differ by float32 roundings only.
- MXFP8: unless a scale byte below 3 meets nonzero data (q * 2^(byte - 127) then falls below
  bfloat16's subnormals, 2^-133, and is rounded; the reference decodes to float32). A value beyond
  the float32 range is inf in both.

The MXFP8 Linear of a bfloat16 activation on CUDA (``mxfp8_linear``, what a model runs) is one
native call where the library and cuBLASLt are there (``native.decoded_mxfp8_linear``: the cast,
the weight decode and a cuBLASLt GEMM with its bias epilogue, split-K sums reduced in float32, no
process-wide setting touched), with its arguments made once per weight and M for eager layers
(``linear_launcher``): the host cost of one launch instead of three from Python. A bias that is
not bfloat16, contiguous and 256-byte aligned runs the steps above.

The temporary buffers are the price: ``transient_bytes`` gives them for a shape. Runs on the CPU
and on any CUDA device; no shape limits beyond the formats' own (K a multiple of the block size).
"""

from __future__ import annotations

import contextlib

import torch

from .. import native
from . import base, reference
from .base import Backend, BackendSpec, aligned_16, cast_input

# The dtype each op multiplies in (W4A16: the activation's dtype).
_GEMM_DTYPE = {"mxfp8_mm": torch.bfloat16, "nvfp4_mm": torch.float16}


# The cuBLASLt workspace of the one-call MXFP8 Linear (csrc/decoded_linear.cpp, kGemmWorkspaceBytes).
_ONE_CALL_GEMM_WORKSPACE = 4 << 20


def _one_call(fmt: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Linear of ``fmt`` for activations of ``dtype`` on ``device`` runs as one native
    call (``native.decoded_mxfp8_linear``): MXFP8, bfloat16, on a CUDA device the library and
    cuBLASLt serve."""
    if fmt != "mxfp8" or dtype != torch.bfloat16 or device.type != "cuda":
        return False
    return native.decoded_linear_status(base.capability(device))[0]


def _cublas_epilogue(op: str, out_dtype: torch.dtype, bias_dtype: torch.dtype | None) -> bool:
    """Whether cuBLAS writes the output of ``op`` directly (one rounding of the float32 sums, bias
    included) rather than a float32 product that the epilogue finishes: MXFP8 into bfloat16, with
    no bias or a bfloat16 one."""
    return op == "mxfp8_mm" and out_dtype == torch.bfloat16 and bias_dtype in (None, torch.bfloat16)


@contextlib.contextmanager
def _float32_reductions():
    """Inside the block cuBLAS keeps split-K partial sums of bfloat16 GEMMs in float32 (torch lets
    it reduce them in bfloat16 by default, a second rounding)."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction_split_k)
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = saved


def _float32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [N, K].T as float32 [M, N], the products summed in float32: cuBLAS's float32
    output for 16-bit operands on CUDA, else a float32 GEMM with TF32 off."""
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b.t(), out_dtype=torch.float32)
    with reference._ieee_fp32_matmul():
        return a.float() @ b.float().t()


def _epilogue(product: torch.Tensor, alpha, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """alpha * product + bias in float32, rounded once to ``out_dtype``, in one pass over the
    float32 product [M, N] (in place for a float32 output)."""
    if alpha is None and bias is None:
        return product.to(out_dtype)
    out = product if out_dtype == torch.float32 else torch.empty_like(product, dtype=out_dtype)
    if alpha is None:
        return torch.add(product, bias, out=out)
    alpha = alpha.reshape(())
    if bias is None:
        return torch.mul(product, alpha, out=out)
    return torch.addcmul(bias, product, alpha, out=out)


def _product(op, a, b, alpha, bias, out_dtype) -> torch.Tensor:
    """alpha * (a @ b.T) + bias as [M, N] of ``out_dtype`` for decoded operands a [M, K] and
    b [N, K] of one dtype (see the module docstring). alpha: a float32 tensor with one element,
    or None for 1."""
    if _cublas_epilogue(op, out_dtype, None if bias is None else bias.dtype):  # alpha is None there
        with _float32_reductions():
            return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())
    return _epilogue(_float32_product(a, b), alpha, bias, out_dtype)


class DecodeCublasBackend(Backend):
    spec = BackendSpec(
        name="decode_cublas",
        description=(
            "the weight decoded exactly into a temporary bf16/f16 buffer (native dequantize), then torch.mm "
            "(cuBLAS) with float32 accumulation; opt-in, the bar for the fused kernels"
        ),
        ops=("mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm"),
        cpu=True,
        auto=False,
    )

    def kernel_config(self, fmt, m, n, k):
        """What runs for a bfloat16 output without bias; ``fmt``: "mxfp8", "nvfp4" or "nvfp4_w4a16"."""
        if fmt == "mxfp8":
            return "decode to bf16 + cuBLAS bf16"
        dtype = "f16" if fmt == "nvfp4" else "a's dtype"
        return f"decode to {dtype} + cuBLAS fp32 out + epilogue"

    def transient_bytes(
        self, op: str, m: int, n: int, k: int, out_dtype: torch.dtype = torch.bfloat16,
        bias_dtype: torch.dtype | None = None, one_call: bool = False,
    ) -> int:
        """Bytes of the temporary buffers one call of ``op`` allocates on CUDA besides its output:
        the decoded weight [N, K], the decoded activation [M, K] (``mxfp8_mm`` / ``nvfp4_mm``; in the
        linear ops the cast writes it instead of the quantized activation) and the float32 product
        [M, N] when the epilogue finishes it into a 16-bit output; for the MXFP8 Linear in one native
        call (``one_call``: ``fuses_linear``), its cuBLASLt workspace. For
        ``nvfp4_weight_only_mm``, ``out_dtype`` is the activation's dtype."""
        gemm_dtype = _GEMM_DTYPE.get(op, out_dtype)
        size = gemm_dtype.itemsize
        activation = 0 if op == "nvfp4_weight_only_mm" else m * k * size
        product = 0
        if not _cublas_epilogue(op, out_dtype, bias_dtype) and out_dtype != torch.float32:
            product = m * n * 4
        gemm_workspace = _ONE_CALL_GEMM_WORKSPACE if one_call else 0
        return n * k * size + activation + product + gemm_workspace

    def takes_decoded_activation(self, op, device, m):
        return True

    def fuses_linear(self, fmt, device, m, dtype):
        return _one_call(fmt, device, dtype)

    def linear_launcher(self, fmt, device, m, dtype, b_q, b_s, bias, *, scaling="rceil", b_ts=None,
                        activation_scale=None):
        """For the MXFP8 Linear of bfloat16 activations on CUDA (``fuses_linear``): the one native
        call (``native.decoded_mxfp8_linear_launcher``), its arguments made once; a call makes the
        output and, unless x is contiguous and 16-byte aligned, x [M, K] as the cast reads it. It
        holds the bias, not b_q and b_s (the caller keeps those alive). None for a bias other than
        a contiguous, 256-byte aligned bfloat16 [N] (what cuBLASLt assumes; torch's allocations
        are), or a misaligned weight (``mxfp8_linear`` runs the steps or copies them then)."""
        if not _one_call(fmt, device, dtype) or b_q.data_ptr() % 16 or b_s.data_ptr() % 16:
            return None
        if bias is not None and not (bias.dtype == torch.bfloat16 and bias.is_contiguous() and bias.data_ptr() % 256 == 0):
            return None
        n = b_q.shape[0]
        launch = native.decoded_mxfp8_linear_launcher(dtype, m, device, b_q, b_s, bias, scaling)

        def run(x):
            out = x.new_empty((*x.shape[:-1], n))
            launch(x if x.is_contiguous() and x.data_ptr() % 16 == 0 else cast_input(x), out)
            return out

        run.small_operands = (bias,)  # held by run; b_q and b_s are the caller's to keep
        return run

    def mxfp8_linear(self, x, b_q, b_s, bias, scaling):
        """mxfp8_mm(*quantize_mxfp8(x, scaling), b_q, b_s, bias, x.dtype) for a bfloat16 x [M, K] on
        CUDA (``fuses_linear``): one native call, or, for a bias the call does not take as it is
        (``linear_launcher``), the cast's decode then ``mxfp8_mm_decoded``."""
        b_q, b_s = aligned_16(b_q), aligned_16(b_s)  # alive through the call
        run = self.linear_launcher("mxfp8", x.device, x.shape[0], x.dtype, b_q, b_s, bias, scaling=scaling)
        if run is not None:
            return run(x)
        a = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        native.quantize_dequantize_mxfp8(cast_input(x), scaling, a, checked=False)
        return self.mxfp8_mm_decoded(a, b_q, b_s, bias, x.dtype)

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        a = reference.dequantize_mxfp8(a_q, a_s, torch.bfloat16)
        return self.mxfp8_mm_decoded(a, b_q, b_s, bias, out_dtype)

    def mxfp8_mm_decoded(self, a, b_q, b_s, bias, out_dtype):
        """mxfp8_mm from the activation's exact bfloat16 decode a [M, K]."""
        b = reference.dequantize_mxfp8(b_q, b_s, torch.bfloat16)
        return _product("mxfp8_mm", a, b, None, bias, out_dtype)

    def nvfp4_mm(self, a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        a = reference.dequantize_nvfp4(a_q, a_s, None, torch.float16)
        return self.nvfp4_mm_decoded(a, a_ts, b_q, b_s, b_ts, bias, out_dtype)

    def nvfp4_mm_decoded(self, a, a_ts, b_q, b_s, b_ts, bias, out_dtype):
        """nvfp4_mm from the activation's e2m1 x block scale values a [M, K] float16 (its tensor
        scale a_ts apart)."""
        b = reference.dequantize_nvfp4(b_q, b_s, None, torch.float16)
        return _product("nvfp4_mm", a, b, a_ts.reshape(()) * b_ts.reshape(()), bias, out_dtype)

    def nvfp4_weight_only_mm(self, a, b_q, b_s, b_ts, bias):
        b = reference.dequantize_nvfp4(b_q, b_s, None, a.dtype)
        return _product("nvfp4_weight_only_mm", a, b, b_ts, bias, a.dtype)
