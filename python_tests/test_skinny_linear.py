"""A quantized Linear on Hopper in one native call: the skinny kernels quantizing their bf16/f16
activation themselves (``dq_sm90_*_skinny_linear``, one launch), the cast and the GEMM enqueued by
one call (``dq_sm90_*_linear``, csrc/sm90_linear.cu), and where the linear ops take them
(``backends.plan_linear``, ``cutlass.linear_kernel``).

The CPU tests fake an sm_90 device and a native library with the sm90_gemm family (no kernel runs);
the GPU tests (``gpu`` marker, an H100) compare them with the cast (``formats.quantize_*`` on the
GPU) followed by the GEMM kernels, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import fake_capability, family_built, replayed

import dq_kernels as dq
from dq_kernels import backends, formats, native, ops
from dq_kernels.backends import cutlass

CUDA = torch.device("cuda", 0)


# ----------------------------------------------------------------------------------------------
# Where the linear ops fuse (no GPU: capability and library faked)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hopper_with_library(monkeypatch):
    """An sm_90 device and a native library with the sm90_gemm family, as the selection sees them."""
    fake_capability(monkeypatch, (9, 0))
    info = {"families": {native.SM90_FAMILY: ["90a"], native.CAST_FAMILY: ["90a"]}, "archs": ["90a"]}
    monkeypatch.setattr(native, "status", lambda: (True, "loaded"))
    monkeypatch.setattr(native, "build_info", lambda: info)
    monkeypatch.setattr(native, "cublaslt_found", lambda: True)


def plan(fmt, m, dtype=torch.bfloat16, device=CUDA, cast_backend=None, mm_backend=None, preferred=None):
    return backends.plan_linear(fmt, device, m, 3072, 3072, dtype, cast_backend, mm_backend, preferred)


@pytest.mark.usefixtures("hopper_with_library")
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_one_call_wherever_cutlass_or_decode_cublas_runs_the_mm(fmt):
    """One call wherever the chosen mm backend is cutlass, at every M, or decode_cublas (MXFP8 above
    M = 2048, backends.SM90_MXFP8_DECODE_CUBLAS_MIN_M: the cast, the weight decode and cuBLASLt);
    auto's choice of mm decides (MXFP8 runs triton_sm90 at some M up to 64: two steps there)."""
    for m in (1, 2, 8, 9, 16, native.SM90_SKINNY_MAX_M, native.SM90_SKINNY_MAX_M + 1, 4096):
        chosen = plan(fmt, m)
        assert chosen.fused == (chosen.mm.spec.name in ("cutlass", "decode_cublas")), (m, chosen)
        assert not (chosen.fused and chosen.decoded)
        assert plan(fmt, m, mm_backend="cutlass").fused, m
    assert plan(fmt, 1).fused and plan(fmt, 300).fused
    large = plan("mxfp8", 4096)
    assert large.fused and large.mm.spec.name == "decode_cublas"


@pytest.mark.usefixtures("hopper_with_library")
def test_decode_cublas_one_call_needs_bf16_mxfp8_and_cublaslt(monkeypatch):
    """decode_cublas runs the Linear in one call for MXFP8 with a bfloat16 activation only (its
    GEMM writes bfloat16), and only where the library found cuBLASLt; else the steps."""
    assert not plan("nvfp4", 4096, mm_backend="decode_cublas").fused
    for dtype in (torch.float16, torch.float32):
        chosen = plan("mxfp8", 4096, dtype, mm_backend="decode_cublas")
        assert not chosen.fused and chosen.decoded
    monkeypatch.setattr(native, "cublaslt_found", lambda: False)
    backends._forget_selections()
    assert not plan("mxfp8", 4096).fused
    assert "cuBLASLt" in native.decoded_linear_status((9, 0))[1]
    assert "not sm_89" in native.decoded_linear_status((8, 9))[1]


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_linear_kernel_by_m_weight_and_dtype(fmt):
    """The skinny kernel quantizes the activation itself at M <= QUANTIZING_SKINNY_MAX_M (bf16 and
    f16 only) for a weight of at most QUANTIZING_SKINNY_MAX_WEIGHT elements; the cast then the
    skinny kernel up to M = 64; the decoded cast and the mixed-input kernel above."""
    limit, small = cutlass.QUANTIZING_SKINNY_MAX_M, (cutlass.QUANTIZING_SKINNY_MAX_WEIGHT[fmt] // 3072, 3072)
    for dtype in (torch.bfloat16, torch.float16):
        assert cutlass.linear_kernel(fmt, 1, *small, dtype) == "quantizing_skinny"
        assert cutlass.linear_kernel(fmt, limit, *small, dtype) == "quantizing_skinny"
        assert cutlass.linear_kernel(fmt, limit + 1, *small, dtype) == "skinny"
        assert cutlass.linear_kernel(fmt, 1, 18432, 3072, dtype) == "skinny"  # FLUX's norm1 linear
    assert cutlass.linear_kernel(fmt, 1, *small, torch.float32) == "skinny"
    assert cutlass.linear_kernel(fmt, native.SM90_SKINNY_MAX_M, *small, torch.bfloat16) == "skinny"
    assert cutlass.linear_kernel(fmt, native.SM90_SKINNY_MAX_M + 1, *small, torch.bfloat16) == "mixed"
    assert set(native.SM90_LINEAR_KERNELS) == {"quantizing_skinny", "skinny", "mixed"}


@pytest.mark.usefixtures("hopper_with_library")
def test_two_steps_for_a_named_cast_or_another_mm():
    """A cast the call names runs as named; an mm backend without a one-call linear runs cast + mm.
    A float32 activation runs in one call too (the cast reads it; no quantizing kernel)."""
    assert plan("nvfp4", 1, torch.float16).fused
    assert plan("nvfp4", 1, torch.float32).fused
    assert not plan("nvfp4", 1, cast_backend="triton_cast").fused
    assert not plan("nvfp4", 1, mm_backend="triton_sm90").fused
    assert not plan("mxfp8", 1, preferred="triton_sm90").fused
    assert plan("mxfp8", 1, preferred="cutlass").fused


def test_not_fused_on_the_cpu_nor_off_hopper(monkeypatch):
    """The CPU path (the reference, the interpreted Triton casts) is unchanged, and so is every GPU
    without the skinny kernels."""
    for fmt in ("mxfp8", "nvfp4"):
        cpu = plan(fmt, 1, device=torch.device("cpu"))
        assert not cpu.fused and cpu.mm.spec.name == "reference"
    fake_capability(monkeypatch, (10, 0))
    monkeypatch.setattr(native, "status", lambda: (True, "loaded"))
    monkeypatch.setattr(native, "build_info", lambda: {"families": {native.SM100_FAMILY: ["100f"]}, "archs": ["100f"]})
    assert not plan("mxfp8", 1, mm_backend="cutlass").fused
    assert not dq.get_backend("cutlass").fuses_linear("mxfp8", CUDA, 1, torch.bfloat16)


def test_linear_ops_on_the_cpu_still_equal_cast_and_mm():
    """The op and its eager entry point on the CPU: the reference cast and mm, as before."""
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    w = torch.randn(16, 64)
    b_q, b_s = formats.quantize_mxfp8(w)
    expected = dq.mxfp8_mm(*formats.quantize_mxfp8(x), b_q, b_s, out_dtype=x.dtype)
    assert torch.equal(dq.mxfp8_linear(x, b_q, b_s), expected)
    assert torch.equal(ops.mxfp8_linear_eager(x, b_q, b_s, None, "rceil", "auto"), expected)
    b_q, b_s, b_ts = formats.quantize_nvfp4(w)
    expected = dq.nvfp4_mm(*formats.quantize_nvfp4(x), b_q, b_s, b_ts, out_dtype=x.dtype)
    assert torch.equal(dq.nvfp4_linear(x, b_q, b_s, b_ts), expected)
    assert torch.equal(ops.nvfp4_linear_eager(x, b_q, b_s, b_ts, None, None, "auto"), expected)


# ----------------------------------------------------------------------------------------------
# Bit for bit cast + skinny mm on an H100
# ----------------------------------------------------------------------------------------------

needs_hopper_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
         and family_built(native.SM90_FAMILY)),
    reason="needs an sm_90 GPU and the sm90_gemm family",
)

MS = [1, 7, 16, 33, 64]
KS = [32, 3072, 4160]  # one partial K chunk; full chunks; full chunks and a partial one (MXFP8 and NVFP4)
NS = [8, 3072]
DTYPES = [torch.bfloat16, torch.float16]


def activation(m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """x [m, k] on the GPU with block magnitudes over 2^-10 .. 2^10 (both dtypes' range) and a zero
    block, so that the block scales differ and some blocks are all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-10, 11, (m, k // 16), generator=g)).repeat_interleave(16, 1)
    x[0, :16] = 0
    return x.to(dtype).to(CUDA)


def weight_and_bias(fmt: str, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.1).to(CUDA)
    bias = (torch.randn(n, generator=g) * 10).to(CUDA)
    return (formats.quantize_mxfp8(w) if fmt == "mxfp8" else formats.quantize_nvfp4(w)), bias


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m", MS)
def test_fused_mxfp8_equals_cast_and_skinny_mm(m, k, n, dtype):
    x = activation(m, k, dtype, seed=m + k)
    (b_q, b_s), bias = weight_and_bias("mxfp8", n, k, seed=n)
    for scaling in ("rceil", "floor"):
        for b in (None, bias):
            expected = torch.empty(m, n, dtype=dtype, device=CUDA)
            native.sm90_mxfp8_skinny_mm(*formats.quantize_mxfp8(x, scaling), b_q, b_s, b, expected)
            out = torch.empty(m, n, dtype=dtype, device=CUDA)
            native.sm90_mxfp8_skinny_linear(x, b_q, b_s, b, out, scaling)
            assert torch.equal(out, expected), (scaling, b is None)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m", MS)
def test_fused_nvfp4_equals_cast_and_skinny_mm(m, k, n, dtype):
    """Dynamic tensor scale (computed in the kernel) and a given one."""
    x = activation(m, k, dtype, seed=m + k)
    (b_q, b_s, b_ts), bias = weight_and_bias("nvfp4", n, k, seed=n)
    b_ts = b_ts.reshape(())
    for activation_scale in (None, torch.tensor(0.05, device=CUDA)):
        a_q, a_s, a_ts = formats.quantize_nvfp4(x, activation_scale)
        for b in (None, bias):
            expected = torch.empty(m, n, dtype=dtype, device=CUDA)
            native.sm90_nvfp4_skinny_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, b, expected)
            out = torch.empty(m, n, dtype=dtype, device=CUDA)
            native.sm90_nvfp4_skinny_linear(x, b_q, b_s, activation_scale, b_ts, b, out)
            assert torch.equal(out, expected), (activation_scale, b is None)


@pytest.mark.gpu
@needs_hopper_kernel
def test_fused_special_values_match():
    """An all-zero activation (NVFP4 tensor scale 0), and inf and NaN in one row (that row's outputs
    NaN, the others unchanged), as cast + mm give them."""
    m, k, n = 7, 160, 136
    (b_q, b_s), _ = weight_and_bias("mxfp8", n, k, seed=1)
    (n_q, n_s, n_ts), _ = weight_and_bias("nvfp4", n, k, seed=1)
    zeros = torch.zeros(m, k, dtype=torch.bfloat16, device=CUDA)
    special = activation(m, k, torch.bfloat16, seed=2)
    special[3, 5], special[3, 70], special[5, 40] = float("inf"), float("nan"), float("-inf")
    for x in (zeros, special):
        for scaling in ("rceil", "floor"):
            expected, out = (torch.empty(m, n, dtype=x.dtype, device=CUDA) for _ in range(2))
            native.sm90_mxfp8_skinny_mm(*formats.quantize_mxfp8(x, scaling), b_q, b_s, None, expected)
            native.sm90_mxfp8_skinny_linear(x, b_q, b_s, None, out, scaling)
            torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        expected, out = (torch.empty(m, n, dtype=x.dtype, device=CUDA) for _ in range(2))
        native.sm90_nvfp4_skinny_mm(*formats.quantize_nvfp4(x), n_q, n_s, n_ts.reshape(()), None, expected)
        native.sm90_nvfp4_skinny_linear(x, n_q, n_s, None, n_ts.reshape(()), None, out)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m", [1, 16, 65, 300])
def test_linear_ops_fuse_on_hopper_bit_for_bit(m):
    """The ops and their eager entry points run cast and GEMM in one native call, and give what
    cast + mm give in two steps (a named cast backend runs them so)."""
    k, n = 3072, 272
    x = activation(m, k, torch.bfloat16, seed=m)
    (b_q, b_s), bias = weight_and_bias("mxfp8", n, k, seed=3)
    assert plan("mxfp8", m, mm_backend="cutlass").fused
    unfused = dq.mxfp8_linear(x, b_q, b_s, bias, cast_backend="triton_cast", mm_backend="cutlass")
    assert torch.equal(dq.mxfp8_linear(x, b_q, b_s, bias, mm_backend="cutlass"), unfused)
    assert torch.equal(ops.mxfp8_linear_eager(x, b_q, b_s, bias, "rceil", "cutlass"), unfused)
    (b_q, b_s, b_ts), bias = weight_and_bias("nvfp4", n, k, seed=3)
    for activation_scale in (None, torch.tensor(0.05, device=CUDA)):
        unfused = dq.nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias, cast_backend="triton_cast",
                                  mm_backend="cutlass")
        assert torch.equal(dq.nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, bias, mm_backend="cutlass"), unfused)
        assert torch.equal(ops.nvfp4_linear_eager(x, b_q, b_s, b_ts, activation_scale, bias, "cutlass"), unfused)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m", [1, 16, 300])
def test_quantized_layers_run_their_kept_launchers_bit_for_bit(m):
    """An eager quantized layer on 9.0 runs the one-call Linear through the launcher it keeps
    (tensor._LAUNCHERS): the custom op's result, bit for bit, on the first and on later calls, for a
    3-D x, a row-strided x, another bias and the static NVFP4 activation scale."""
    from torchao.quantization import quantize_

    from dq_kernels import tensor
    from dq_kernels.config import MXFP8Config, NVFP4Config

    k, n = 3072, 272
    for config in (MXFP8Config(), NVFP4Config(), NVFP4Config(activation_amax=6.0)):
        layer = torch.nn.Linear(k, n, dtype=torch.bfloat16, device=CUDA)
        quantize_(layer, config)
        weight = layer.weight
        wide = activation(m, 2 * k, torch.bfloat16, seed=m)
        with torch.inference_mode():
            for x, bias in ((wide[:, :k], layer.bias), (wide[:, k:].contiguous()[None], None),
                            (wide[:, :k], layer.bias.float())):
                through_op = weight._linear_op(x.reshape(m, k), bias).reshape(*x.shape[:-1], n)
                for _ in range(2):
                    assert torch.equal(torch.nn.functional.linear(x, weight, bias), through_op), (config, x.shape)
        launchers = tensor._LAUNCHERS[id(weight.qdata)][1].values()
        assert len(launchers) == 3 and all(run is not None for run, _ in launchers)


@pytest.mark.gpu
@needs_hopper_kernel
def test_fused_kernels_refuse_what_they_cannot_run():
    x = activation(65, 64, torch.bfloat16, seed=0)
    (b_q, b_s), _ = weight_and_bias("mxfp8", 8, 64, seed=0)
    out = torch.empty(65, 8, dtype=torch.bfloat16, device=CUDA)
    with pytest.raises(ValueError, match="1 to 64 rows"):
        native.sm90_mxfp8_skinny_linear(x, b_q, b_s, None, out)
    with pytest.raises(ValueError, match="scaling must be one of"):
        native.sm90_mxfp8_skinny_linear(x[:64], b_q, b_s, None, out[:64], "round")
    with pytest.raises(ValueError, match="out must have a's dtype"):
        native.sm90_mxfp8_skinny_linear(x[:64], b_q, b_s, None, out[:64].float())


LINEAR_CASES = [(1, "quantizing_skinny"), (1, "skinny"), (16, "skinny"), (64, "skinny"), (1, "mixed"), (65, "mixed"),
                (300, "mixed")]


def _bias_dtypes(bias):
    return [None, bias, bias.to(torch.bfloat16), bias.to(torch.float16)]


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, kernel", LINEAR_CASES)
def test_one_call_mxfp8_linear_equals_cast_and_gemm(m, kernel, dtype):
    """``native.sm90_mxfp8_linear`` with each kernel against the cast and the GEMM as two native
    calls, for every bias dtype (the kernels read it as float32) and a row-strided x (at M = 1 one
    that torch calls contiguous)."""
    k, n = 4160, 136
    wide = activation(m, k + 64, dtype, seed=m)
    x = wide[:, :k]  # one row: torch calls it contiguous whatever its row stride
    (b_q, b_s), bias = weight_and_bias("mxfp8", n, k, seed=5)
    for b in _bias_dtypes(bias):
        f32 = None if b is None else b.float()
        expected = torch.empty(m, n, dtype=dtype, device=CUDA)
        if kernel == "mixed":
            native.sm90_mxfp8_mixed_mm(formats.quantize_dequantize_mxfp8(x), b_q, b_s, f32, expected)
        else:
            native.sm90_mxfp8_skinny_mm(*formats.quantize_mxfp8(x), b_q, b_s, f32, expected)
        out = torch.empty(m, n, dtype=dtype, device=CUDA)
        native.sm90_mxfp8_linear(x, b_q, b_s, b, out, "rceil", kernel)
        assert torch.equal(out, expected), None if b is None else b.dtype


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, kernel", LINEAR_CASES)
def test_one_call_nvfp4_linear_equals_cast_and_gemm(m, kernel, dtype):
    """``native.sm90_nvfp4_linear`` as above, with a dynamic and a given activation tensor scale."""
    k, n = 4160, 136
    wide = activation(m, k + 64, dtype, seed=m)
    x = wide[:, :k]  # one row: torch calls it contiguous whatever its row stride
    (b_q, b_s, b_ts), bias = weight_and_bias("nvfp4", n, k, seed=5)
    b_ts = b_ts.reshape(())
    for activation_scale in (None, torch.tensor(0.05, device=CUDA)):
        for b in _bias_dtypes(bias):
            f32 = None if b is None else b.float()
            expected = torch.empty(m, n, dtype=dtype, device=CUDA)
            if kernel == "mixed":
                values, a_ts = formats.quantize_dequantize_nvfp4(x, activation_scale)
                native.sm90_nvfp4_mixed_mm(values, b_q, b_s, a_ts.reshape(()), b_ts, f32, expected)
            else:
                a_q, a_s, a_ts = formats.quantize_nvfp4(x, activation_scale)
                native.sm90_nvfp4_skinny_mm(a_q, a_s, a_ts.reshape(()), b_q, b_s, b_ts, f32, expected)
            out = torch.empty(m, n, dtype=dtype, device=CUDA)
            native.sm90_nvfp4_linear(x, b_q, b_s, b_ts, activation_scale, b, out, kernel)
            assert torch.equal(out, expected), (activation_scale, None if b is None else b.dtype)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
@pytest.mark.parametrize("m, kernel", [(1, "skinny"), (16, "skinny"), (128, "mixed")])
def test_the_gemm_waits_for_its_calls_cast(fmt, m, kernel):
    """The GEMM of a one-call Linear begins while its cast still runs (a programmatic dependent
    launch) and must read that call's activation, not the one a previous call left in the same
    workspace: calls back to back without a synchronization, each a new x, against cast + GEMM."""
    k, n = 3072, 8192  # many CTAs: the GEMM's first ones start early
    (b_q, b_s, *b_ts), _ = weight_and_bias(fmt, n, k, seed=3)
    b_ts = b_ts[0].reshape(()) if b_ts else None
    xs = [activation(m, k, torch.bfloat16, seed=10 + i) * (i + 1) for i in range(8)]
    expected, outs = [], []
    for x in xs:
        out = torch.empty(m, n, dtype=torch.bfloat16, device=CUDA)
        if fmt == "mxfp8" and kernel == "mixed":
            native.sm90_mxfp8_mixed_mm(formats.quantize_dequantize_mxfp8(x), b_q, b_s, None, out)
        elif fmt == "mxfp8":
            native.sm90_mxfp8_skinny_mm(*formats.quantize_mxfp8(x), b_q, b_s, None, out)
        elif kernel == "mixed":
            values, a_ts = formats.quantize_dequantize_nvfp4(x)
            native.sm90_nvfp4_mixed_mm(values, b_q, b_s, a_ts.reshape(()), b_ts, None, out)
        else:
            a_q, a_s, a_ts = formats.quantize_nvfp4(x)
            native.sm90_nvfp4_skinny_mm(a_q, a_s, a_ts.reshape(()), b_q, b_s, b_ts, None, out)
        expected.append(out)
    torch.cuda.synchronize()
    for x in xs:
        out = torch.empty(m, n, dtype=torch.bfloat16, device=CUDA)
        if fmt == "mxfp8":
            native.sm90_mxfp8_linear(x, b_q, b_s, None, out, "rceil", kernel)
        else:
            native.sm90_nvfp4_linear(x, b_q, b_s, b_ts, None, None, out, kernel)
        outs.append(out)
    for i, (out, want) in enumerate(zip(outs, expected)):
        assert torch.equal(out, want), i


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
@pytest.mark.parametrize("m, kernel", [(1, "quantizing_skinny"), (1, "skinny"), (16, "skinny"), (128, "mixed")])
def test_one_call_linear_in_a_cuda_graph(fmt, m, kernel):
    """The one-call Linear captured into a CUDA graph (the GEMM a programmatic dependent of the cast
    there too) replays the eager result."""
    k, n = 3072, 1024
    (b_q, b_s, *b_ts), bias = weight_and_bias(fmt, n, k, seed=4)
    b_ts = b_ts[0].reshape(()) if b_ts else None
    x = activation(m, k, torch.bfloat16, seed=9)

    def linear():
        out = torch.empty(m, n, dtype=torch.bfloat16, device=CUDA)
        if fmt == "mxfp8":
            native.sm90_mxfp8_linear(x, b_q, b_s, bias, out, "rceil", kernel)
        else:
            native.sm90_nvfp4_linear(x, b_q, b_s, b_ts, None, bias, out, kernel)
        return out

    assert torch.equal(replayed(linear), linear())


@pytest.mark.gpu
@needs_hopper_kernel
def test_one_call_linear_refuses_what_it_cannot_run():
    x = activation(65, 64, torch.bfloat16, seed=0)
    (b_q, b_s), _ = weight_and_bias("mxfp8", 8, 64, seed=0)
    out = torch.empty(65, 8, dtype=torch.bfloat16, device=CUDA)
    with pytest.raises(ValueError, match="kernel must be one of"):
        native.sm90_mxfp8_linear(x, b_q, b_s, None, out, "rceil", "fast")
    with pytest.raises(ValueError, match="takes 1 to 64 rows"):
        native.sm90_mxfp8_linear(x, b_q, b_s, None, out, "rceil", "skinny")
    with pytest.raises(ValueError, match="contiguous bfloat16 or float16"):
        native.sm90_mxfp8_linear(x[:1].float(), b_q, b_s, None, out[:1].float(), "rceil", "quantizing_skinny")
    with pytest.raises(ValueError, match="out must have x's dtype"):
        native.sm90_mxfp8_linear(x, b_q, b_s, None, out.float(), "rceil", "mixed")
    with pytest.raises(ValueError, match="bias must be"):
        native.sm90_mxfp8_linear(x, b_q, b_s, torch.zeros(8, dtype=torch.int32, device=CUDA), out, "rceil", "mixed")


@pytest.mark.usefixtures("hopper_with_library")
def test_mxfp8_skinny_range_depends_on_the_weight_size():
    """MXFP8 runs the skinny kernel up to M = 16 for a weight of at most SM90_MXFP8_SMALL_WEIGHT
    elements (one call), up to M = 8 for larger ones (triton_sm90 from there to 64)."""
    assert backends.sm90_skinny_best_max_m("mxfp8_mm", 3072, 3072) == 16
    assert backends.sm90_skinny_best_max_m("mxfp8_mm", 18432, 3072) == 8
    assert backends.sm90_skinny_best_max_m("nvfp4_mm", 3072, 3072) == backends.SM90_SKINNY_BEST_MAX_M["nvfp4_mm"]
    assert plan("mxfp8", 16).fused and plan("mxfp8", 16).mm.spec.name == "cutlass"
    assert plan("mxfp8", 17).mm.spec.name == "triton_sm90"
    large = backends.plan_linear("mxfp8", CUDA, 16, 18432, 3072, torch.bfloat16, None, None)
    assert large.mm.spec.name == "triton_sm90" and not large.fused
