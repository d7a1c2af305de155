"""The ``decode_cublas`` backend against the reference backend: every op, odd shapes, bias and
output dtypes, the linear ops' decoded-activation path, its exact domain and its transient bytes."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from kernel_checks import replayed

import dq_kernels as dq
from dq_kernels import formats, native
from dq_kernels.backends import get_backend

BACKEND = "decode_cublas"
SHAPES = [(1, 1000, 160), (77, 1000, 160), (129, 40, 96)]  # (M, N, K)
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def operands(fmt, m, n, k, device, seed):
    """Random normal activation x [M, K] (bf16) and weight w [N, K] (float32) quantized to ``fmt``:
    (x, quantized x, quantized w), the quantized forms as the mm ops take them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).to(device)
    w = torch.randn(n, k, generator=g).to(device)
    quantize = dq.quantize_mxfp8 if fmt == "mxfp8" else dq.quantize_nvfp4
    return x, quantize(x), quantize(w)


def assert_matches(out, expected):
    """out equals ``expected`` (the reference in the same dtype) up to the float32 accumulation
    order: within one rounding of the output dtype, plus float32 noise where sums cancel."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    rtol = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[out.dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=rtol, atol=1e-5 * expected.float().abs().max().item())


def mm(fmt, a, b, bias, out_dtype, backend):
    if fmt == "mxfp8":
        return dq.mxfp8_mm(*a, *b, bias, out_dtype, backend=backend)
    return dq.nvfp4_mm(*a, *b, bias, out_dtype, backend=backend)


def check_mm_ops(device, m, n, k):
    for i, fmt in enumerate(("mxfp8", "nvfp4")):
        x, a, b = operands(fmt, m, n, k, device, seed=m + n + k + i)
        for bias_dtype in (None, torch.bfloat16, torch.float32):
            bias = None if bias_dtype is None else torch.randn(n).to(bias_dtype).to(device)
            for out_dtype in OUT_DTYPES:
                expected = mm(fmt, a, b, bias, out_dtype, "reference")
                assert_matches(mm(fmt, a, b, bias, out_dtype, BACKEND), expected)


def check_weight_only_mm(device, m, n, k):
    x, _, b = operands("nvfp4", m, n, k, device, seed=m * n + k)
    for dtype in OUT_DTYPES:
        a = x.to(dtype)
        bias = torch.randn(n).to(dtype).to(device)
        expected = dq.nvfp4_weight_only_mm(a, *b, bias, backend="reference")
        assert_matches(dq.nvfp4_weight_only_mm(a, *b, bias, backend=BACKEND), expected)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_mm_ops_match_the_reference(m, n, k):
    check_mm_ops("cpu", m, n, k)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_weight_only_mm_matches_the_reference(m, n, k):
    check_weight_only_mm("cpu", m, n, k)


@pytest.mark.parametrize("b_byte, a_byte, exact", [(3, 147, True), (246, 107, True), (2, 147, False)])
def test_mxfp8_exact_domain(b_byte, a_byte, exact):
    """Each output element is one weight element times 2^(a_byte - 127) (the activation is the
    identity), for every finite e4m3 code at weight scale byte b_byte: equal to the reference from
    byte 3 (subnormal codes decode to bf16 subnormals down to 2^-133) to byte 246 (448 * 2^119),
    not at byte 2, outside the documented domain."""
    codes = torch.arange(128, dtype=torch.uint8).clamp(max=0x7E)  # 0x7F is NaN
    codes[1::2] |= 0x80  # every other one negative
    b_q = codes.view(4, 32).view(torch.float8_e4m3fn)
    a_q = torch.eye(32).to(torch.float8_e4m3fn)
    a_s = formats.to_blocked(torch.full((32, 1), a_byte, dtype=torch.uint8))
    b_s = formats.to_blocked(torch.full((4, 1), b_byte, dtype=torch.uint8))
    expected = dq.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32, backend="reference")
    out = dq.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32, backend=BACKEND)
    assert torch.isfinite(expected).all()
    assert torch.equal(out, expected) == exact


def test_linear_ops_run_it_as_cast_then_mm():
    """With mm_backend="decode_cublas" the linear ops give cast + mm bit for bit, and the decoded
    activation path (what the linear ops take on CUDA) gives the same as the quantized one."""
    m, n, k = 77, 1000, 160
    backend = get_backend(BACKEND)
    x, (a_q, a_s), (b_q, b_s) = operands("mxfp8", m, n, k, "cpu", seed=1)
    bias = torch.randn(n).to(torch.bfloat16)
    expected = dq.mxfp8_mm(a_q, a_s, b_q, b_s, bias, x.dtype, backend=BACKEND)
    assert torch.equal(dq.mxfp8_linear(x, b_q, b_s, bias, mm_backend=BACKEND), expected)
    decoded = formats.dequantize_mxfp8(a_q, a_s, torch.bfloat16)
    assert torch.equal(backend.mxfp8_mm_decoded(decoded, b_q, b_s, bias, x.dtype), expected)

    x, (a_q, a_s, a_ts), (b_q, b_s, b_ts) = operands("nvfp4", m, n, k, "cpu", seed=2)
    expected = dq.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, x.dtype, backend=BACKEND)
    assert torch.equal(dq.nvfp4_linear(x, b_q, b_s, b_ts, None, bias, mm_backend=BACKEND), expected)
    decoded = formats.dequantize_nvfp4(a_q, a_s, torch.ones(()), torch.float16)
    assert torch.equal(backend.nvfp4_mm_decoded(decoded, a_ts, b_q, b_s, b_ts, bias, x.dtype), expected)


def test_spec_and_transient_bytes():
    backend = get_backend(BACKEND)
    spec = backend.spec
    assert not spec.auto and spec.cpu and spec.capabilities is None
    assert spec.shape_reason("nvfp4_mm", 1, 1000, 160) is None
    assert dq.backends.select("mxfp8_mm", torch.device("cpu"), 4, 8, 64).spec.name != BACKEND
    m, n, k = 4096, 3072, 12288
    # MXFP8 into bf16: decoded weight and activation, bf16; cuBLAS writes the output; the linear
    # op's one native call adds its cuBLASLt workspace
    assert backend.transient_bytes("mxfp8_mm", m, n, k) == 2 * (n * k + m * k)
    assert backend.transient_bytes("mxfp8_mm", m, n, k, one_call=True) == 2 * (n * k + m * k) + (4 << 20)
    # a float32 bias: the float32 product too; a float32 output is the product itself
    assert backend.transient_bytes("mxfp8_mm", m, n, k, bias_dtype=torch.float32) == 2 * (n * k + m * k) + 4 * m * n
    assert backend.transient_bytes("mxfp8_mm", m, n, k, torch.float32) == 2 * (n * k + m * k)
    assert backend.transient_bytes("nvfp4_mm", m, n, k) == 2 * (n * k + m * k) + 4 * m * n
    assert backend.transient_bytes("nvfp4_weight_only_mm", m, n, k) == 2 * n * k + 4 * m * n
    assert backend.transient_bytes("nvfp4_weight_only_mm", m, n, k, torch.float32) == 4 * n * k


def _cublaslt_header() -> Path | None:
    """cublasLt.h of an installed nvidia-cublas wheel (CUDA 13 or 12), or None."""
    if importlib.util.find_spec("nvidia") is None:
        return None
    for root in importlib.util.find_spec("nvidia").submodule_search_locations:
        for sub in ("cu13/include", "cublas/include"):
            if (Path(root) / sub / "cublasLt.h").is_file():
                return Path(root) / sub / "cublasLt.h"
    return None


def test_the_cublaslt_declarations_match_the_header():
    """csrc/decoded_linear.cpp declares the cuBLASLt constants it uses instead of including
    cublasLt.h (an isolated build has no cuBLAS headers): each value equals the header's, where an
    nvidia-cublas wheel is installed (torch's CUDA builds depend on one)."""
    header = _cublaslt_header()
    if header is None:
        pytest.skip("no nvidia-cublas wheel with cublasLt.h is installed")
    text = "".join((header.parent / name).read_text() for name in ("cublasLt.h", "cublas_api.h", "library_types.h"))
    source = (Path(__file__).parents[1] / "csrc" / "decoded_linear.cpp").read_text()
    declared = re.findall(r"constexpr \w+ k\w+ = (\d+);\s+// (\w+)", source)
    assert len(declared) == 14
    declared.append((re.search(r"kFloat32Reductions = (\d+);", source).group(1), "CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE"))
    for value, name in declared:
        found = re.search(rf"\b{name}\s*=\s*(\w+)", text)
        assert found, f"{name} is not in {header.name}"
        assert int(found.group(1), 0) == int(value), name
    struct = text.split("} cublasLtMatmulHeuristicResult_t;")[0].rsplit("typedef struct {", 1)[1]
    fields = re.findall(r"^\s*(\w+) (\w+(?:\[\d\])?);", struct, re.M)
    assert fields == [("cublasLtMatmulAlgo_t", "algo"), ("size_t", "workspaceSize"), ("cublasStatus_t", "state"),
                      ("float", "wavesCount"), ("int", "reserved[4]")]
    assert re.search(r"uint64_t data\[8\];\s*\} cublasLtMatmulAlgo_t;", text)


# ---------------------------------------------------------------------------------------------- GPU

needs_one_call = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.decoded_linear_status(torch.cuda.get_device_capability())[0]),
    reason="needs a CUDA GPU, the native library and cuBLASLt",
)


@pytest.mark.gpu
@needs_one_call
@pytest.mark.parametrize("m,n,k", [(1, 1000, 160), (77, 1000, 4160), (4096, 3072, 3072), (300, 1001, 96)])
def test_gpu_one_call_linear_matches_the_reference(m, n, k):
    """The MXFP8 Linear of a bfloat16 activation on decode_cublas is one native call (the cast, the
    weight decode and cuBLASLt with its bias epilogue): the reference up to float32 summation order,
    for a 2-D, a row-strided and a 3-D x, with and without a bias; a float32 bias runs the steps."""
    x, _, (b_q, b_s) = operands("mxfp8", m, n, k, "cuda", seed=m + n)
    wide = torch.cat([x, x[:, :32]], dim=1)[:, :k]  # the same rows, a row stride of K + 32
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    backend = get_backend(BACKEND)
    for b in (None, bias, bias.float()):
        expected = dq.mxfp8_mm(*dq.quantize_mxfp8(x), b_q, b_s, b, x.dtype, backend="reference")
        for given in (x, wide):
            assert_matches(backend.mxfp8_linear(given, b_q, b_s, b, "rceil"), expected)
        if b is None or b.dtype == torch.bfloat16:
            run = backend.linear_launcher("mxfp8", x.device, m, x.dtype, b_q, b_s, b)
            assert torch.equal(run(x[None]), backend.mxfp8_linear(x, b_q, b_s, b, "rceil")[None])
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    native.decoded_mxfp8_linear(x, b_q, b_s, bias, out)
    assert torch.equal(out, backend.mxfp8_linear(x, b_q, b_s, bias, "rceil"))


@pytest.mark.gpu
@needs_one_call
def test_gpu_one_call_linear_in_a_cuda_graph_and_its_checks():
    """The one call captures into a CUDA graph (its workspace from the graph's pool), also as the
    first call of a shape, and replays the eager result; a bias cuBLASLt would not take as it is
    runs the steps; the checked wrapper names what it refuses."""
    m, n, k = 4096, 3072, 3072
    x, _, (b_q, b_s) = operands("mxfp8", m, n, k, "cuda", seed=7)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    backend = get_backend(BACKEND)
    eager = backend.mxfp8_linear(x, b_q, b_s, bias, "rceil")
    assert torch.equal(replayed(lambda: backend.mxfp8_linear(x, b_q, b_s, bias, "rceil")), eager)
    cold = x[:1000]  # a shape not run before: its first call, cuBLASLt's setup included, is captured
    captured = replayed(lambda: backend.mxfp8_linear(cold, b_q, b_s, bias, "rceil"))
    assert torch.equal(captured, backend.mxfp8_linear(cold, b_q, b_s, bias, "rceil"))

    shifted = torch.empty(n + 8, dtype=torch.bfloat16, device="cuda")[8:].copy_(bias)  # 16- not 256-byte aligned
    expected = dq.mxfp8_mm(*dq.quantize_mxfp8(x), b_q, b_s, bias, x.dtype, backend="reference")
    assert backend.linear_launcher("mxfp8", x.device, m, x.dtype, b_q, b_s, shifted) is None
    assert_matches(backend.mxfp8_linear(x, b_q, b_s, shifted, "rceil"), expected)  # the steps
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="bias None or bfloat16"):
        native.decoded_mxfp8_linear(x, b_q, b_s, bias.float(), out)
    with pytest.raises(ValueError, match="b_q must be float8_e4m3fn or uint8"):
        native.decoded_mxfp8_linear(x, b_q.float(), b_s, bias, out)
    with pytest.raises(ValueError, match="bias.data_ptr.. must be 256-byte aligned"):
        native.decoded_mxfp8_linear(x, b_q, b_s, shifted, out)
    with pytest.raises(ValueError, match="out must be bfloat16"):
        native.decoded_mxfp8_linear(x, b_q, b_s, bias, out.half())


@pytest.mark.gpu
@needs_one_call
def test_gpu_quantized_layer_keeps_the_one_call_launcher():
    """An eager MXFP8 layer at M = 4096 on 9.0 (auto: decode_cublas) keeps the one call's launcher
    and gives the custom op's result bit for bit."""
    from torchao.quantization import quantize_

    from dq_kernels import tensor
    from dq_kernels.config import MXFP8Config

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("auto takes decode_cublas at large M on 9.0")
    layer = torch.nn.Linear(3072, 3072, dtype=torch.bfloat16, device="cuda")
    quantize_(layer, MXFP8Config())
    x = torch.randn(1, 4096, 3072, device="cuda").to(torch.bfloat16)
    with torch.inference_mode():
        through_op = layer.weight._linear_op(x.reshape(4096, 3072), layer.bias).reshape(1, 4096, 3072)
        for _ in range(2):
            assert torch.equal(layer(x), through_op)
    (run, _), = tensor._LAUNCHERS[id(layer.weight.qdata)][1].values()
    assert run is not None


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [*SHAPES, (4096, 3072, 3072), (512, 3072, 4160)])
def test_gpu_matches_the_reference(m, n, k):
    check_mm_ops("cuda", m, n, k)
    check_weight_only_mm("cuda", m, n, k)


@pytest.mark.gpu
def test_gpu_linear_ops_take_the_decoded_activation():
    """On CUDA the linear ops hand decode_cublas the cast kernel's one-pass decode (MXFP8 with a
    bfloat16 x: inside the one native call); the result is the quantized path's (cast + mm) up to
    accumulation order."""
    m, n, k = 129, 1000, 4160
    x, (a_q, a_s), (b_q, b_s) = operands("mxfp8", m, n, k, "cuda", seed=3)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    expected = dq.mxfp8_mm(a_q, a_s, b_q, b_s, bias, x.dtype, backend="reference")
    assert_matches(dq.mxfp8_linear(x, b_q, b_s, bias, mm_backend=BACKEND), expected)
    x, (a_q, a_s, a_ts), (b_q, b_s, b_ts) = operands("nvfp4", m, n, k, "cuda", seed=4)
    expected = dq.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, x.dtype, backend="reference")
    assert_matches(dq.nvfp4_linear(x, b_q, b_s, b_ts, None, bias, mm_backend=BACKEND), expected)
