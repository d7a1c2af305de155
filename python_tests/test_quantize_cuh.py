"""csrc/quantize.cuh (the quantizers of the CUDA cast kernels) against dq_kernels.formats, on the CPU.

The header's functions are __host__ __device__: python_tests/quantize_cuh_harness.cu runs them on
the host over whole tensors, built with nvcc into a throwaway shared library (the test skips without
nvcc). Compared bit for bit with formats on CPU tensors (IEEE divisions by 448, 6 and 2688:
``by_reciprocal=False``); the kernels' CUDA variant (multiplication by the float32 reciprocal, as
torch on CUDA) differs only in those three constant divisions, checked here on the scale bytes, and
end to end by the GPU tests (test_cast.py).

Inputs: every bf16 and every f16 bit pattern (as element values and as block amax, so every amax a
bf16 or f16 tensor can have), random float32 bit patterns, float32 values within a few ulps of
every e4m3 and e2m1 rounding midpoint and of 448 * 2^k (where RCEIL's scale steps), zero, subnormal,
inf and NaN blocks, and the awkward tensors of test_formats.
"""

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dq_kernels import formats

from test_formats import awkward

HARNESS = Path(__file__).with_name("quantize_cuh_harness.cu")
CSRC = Path(__file__).resolve().parents[1] / "csrc"
E4M3_NAN = 0x7F


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc (the CUDA toolkit) to build the host harness of csrc/quantize.cuh")
    library = tmp_path_factory.mktemp("quantize_cuh") / "harness.so"
    command = [nvcc, "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"-I{CSRC}", str(HARNESS), "-o", str(library)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(library))
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    for name in ("h_encode_e4m3", "h_encode_e4m3x2", "h_encode_e2m1"):
        getattr(lib, name).argtypes = [p, i64, p]
    lib.h_quantize_mxfp8.argtypes = [p, i64, i64, i32, i32, p, p]
    lib.h_nvfp4_tensor_scale.argtypes = [f32, i32]
    lib.h_nvfp4_tensor_scale.restype = f32
    lib.h_quantize_nvfp4.argtypes = [p, i64, i64, f32, i32, p, p]
    lib.h_decode_nvfp4_f16.argtypes = [p, p, i64, i64, p]
    return lib


def every_16_bit(dtype: torch.dtype) -> torch.Tensor:
    """Every bf16 or f16 bit pattern, as float32 (exact)."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).float()


def near(values: torch.Tensor, ulps: int = 3) -> torch.Tensor:
    """float32 values within ``ulps`` ulps of each of ``values`` (positive and negative)."""
    bits = values.float().abs().view(torch.int32).unsqueeze(1) + torch.arange(-ulps, ulps + 1, dtype=torch.int32)
    near = bits.clamp(min=0).view(torch.float32).flatten()
    return torch.cat((near, -near))


def e4m3_grid() -> torch.Tensor:
    """Every finite e4m3 value and the midpoints between neighbours (the rounding boundaries)."""
    v = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.cat((v, (v[1:] + v[:-1]) / 2, torch.tensor([464.0])))


def element_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31 - 1, (1 << 20,), generator=g, dtype=torch.int32).view(torch.float32)
    e2m1 = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    return torch.cat((every_16_bit(torch.bfloat16), every_16_bit(torch.float16), random_bits,
                      near(e4m3_grid()), near(e2m1), near(e4m3_grid() * 2.0**-6)))


def ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous()
    return t.data_ptr()


def same_e4m3(q: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal bytes, except that NaN bytes (0x7F, 0xFF) may differ in their sign (formats.py)."""
    q, ref = q.view(torch.uint8), ref.view(torch.uint8)
    nan, nan_ref = (q & 0x7F) == E4M3_NAN, (ref & 0x7F) == E4M3_NAN
    assert torch.equal(nan, nan_ref)
    mismatch = (q != ref) & ~nan
    assert not mismatch.any(), f"{int(mismatch.sum())} bytes differ, first at {mismatch.nonzero()[0].tolist()}"


def test_encode_e4m3(harness):
    y = element_inputs()
    out, pairs = torch.empty(y.numel(), dtype=torch.uint8), torch.empty(y.numel(), dtype=torch.uint8)
    harness.h_encode_e4m3(ptr(y), y.numel(), ptr(out))
    harness.h_encode_e4m3x2(ptr(y), y.numel() // 2, ptr(pairs))
    expected = y.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)  # formats.quantize_mxfp8's last step
    same_e4m3(out, expected)
    same_e4m3(pairs, expected)


def test_encode_e2m1(harness):
    y = element_inputs()
    out = torch.empty(y.numel(), dtype=torch.uint8)
    harness.h_encode_e2m1(ptr(y), y.numel(), ptr(out))
    expected = formats._encode_e2m1(y.clamp(-6.0, 6.0))
    finite = ~torch.isnan(y)  # a NaN's code is unspecified (formats.py); its sign decides ours
    assert torch.equal(out[finite], expected[finite])


def amax_values() -> torch.Tensor:
    """Every non-negative bf16 and f16 value (and inf, NaN), float32 values around 448 * 2^k and
    2^k (where the scales step), float32 subnormals, the largest float32."""
    bf16, f16 = every_16_bit(torch.bfloat16), every_16_bit(torch.float16)
    powers = torch.tensor([2.0**k for k in range(-149, 128)])
    steps = near(torch.cat((448 * powers[powers * 448 < 3.4e38], powers, 6 * powers[powers < 5e37])), 4)
    extra = torch.tensor([0.0, float("inf"), float("nan"), 3.4028234663852886e38, 1e-45, 2.0**-127 * 448])
    amax = torch.cat((bf16, f16, steps, extra)).abs()
    return amax[~torch.isinf(amax) | (amax > 0)]


def blocks_with_amax(amax: torch.Tensor, block: int, seed: int) -> torch.Tensor:
    """[len(amax), block] float32: element (i, j) is amax[i] with a random sign at a random column
    of row i, and amax[i] times a random factor in (-1, 1) (or exactly 0, or -amax) elsewhere."""
    g = torch.Generator().manual_seed(seed)
    n = amax.numel()
    factors = torch.rand(n, block, generator=g) * 2 - 1
    factors[:, 1] = 0.0
    factors[:, 2] = -1.0
    x = amax.unsqueeze(1) * factors
    x = torch.where(torch.isnan(x) & ~torch.isnan(amax).unsqueeze(1), 0.0, x)  # inf * 0
    column = torch.randint(0, block, (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x[torch.arange(n), column] = amax * sign
    return x.contiguous()


def mxfp8_on_harness(harness, x: torch.Tensor, scaling: str, by_reciprocal: bool = False):
    x = x.reshape(-1, x.shape[-1]).float().contiguous()
    m, k = x.shape
    q, e = torch.empty(m, k, dtype=torch.uint8), torch.empty(m, k // 32, dtype=torch.uint8)
    harness.h_quantize_mxfp8(ptr(x), m, k, 1 if scaling == "floor" else 0, int(by_reciprocal), ptr(q), ptr(e))
    return q, e


def check_mxfp8(harness, x: torch.Tensor) -> None:
    for scaling in ("rceil", "floor"):
        q, e = mxfp8_on_harness(harness, x, scaling)
        q_ref, s_ref = formats.quantize_mxfp8(x, scaling)
        m, k = q_ref.shape
        assert torch.equal(e, formats.from_blocked(s_ref, m, k // 32)), scaling
        same_e4m3(q, q_ref)


def test_mxfp8_every_16_bit_amax_and_scale_steps(harness):
    check_mxfp8(harness, blocks_with_amax(amax_values(), 32, seed=1))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float32))
def test_mxfp8_awkward_tensors(harness, dtype):
    x = awkward(131, 2080, dtype, seed=3)
    x[5, 64:96] = float("nan")
    x[6, 100] = float("inf")
    x[7, 200] = -float("inf")
    x[8, 300] = float("nan")
    check_mxfp8(harness, x)


def test_mxfp8_rceil_by_reciprocal_scale_bytes(harness):
    """The kernels' variant: amax * float32(1 / 448) instead of amax / 448, then formats' rule."""
    amax = amax_values()
    _, e = mxfp8_on_harness(harness, blocks_with_amax(amax, 32, seed=2), "rceil", by_reciprocal=True)
    descale = amax * (torch.tensor(1.0) / 448.0)  # torch's CUDA division by a Python number
    expected = (formats._ceil_log2(descale).clamp(-127, 127) + 127).to(torch.uint8)
    expected = torch.where(torch.isinf(descale), 254, expected)
    expected = torch.where(torch.isnan(descale), 255, expected).to(torch.uint8)
    assert torch.equal(e.flatten(), expected)


def nvfp4_on_harness(harness, x: torch.Tensor, ts: float, by_reciprocal: bool = False):
    x = x.reshape(-1, x.shape[-1]).float().contiguous()
    m, k = x.shape
    q, s = torch.empty(m, k // 2, dtype=torch.uint8), torch.empty(m, k // 16, dtype=torch.uint8)
    harness.h_quantize_nvfp4(ptr(x), m, k, ts, int(by_reciprocal), ptr(q), ptr(s))
    return q, s


def check_nvfp4(harness, x: torch.Tensor, tensor_scale: torch.Tensor | None) -> None:
    q_ref, s_ref, ts_ref = formats.quantize_nvfp4(x, tensor_scale)
    decoded_ref = formats.dequantize_nvfp4(q_ref, s_ref, torch.tensor(1.0), torch.float16)
    if tensor_scale is None:
        amax = x.abs().amax().float()
        ts = harness.h_nvfp4_tensor_scale(amax.item(), 0)
        assert torch.equal(torch.tensor(ts), ts_ref) or (ts_ref.isnan() and math.isnan(ts))
    q, s = nvfp4_on_harness(harness, x, ts_ref.item())
    m, k = q_ref.shape[0], q_ref.shape[1] * 2
    s_ref = formats.from_blocked(s_ref, m, k // 16).view(torch.uint8)
    assert torch.equal(s, s_ref)
    # the codes of a NaN-scaled block, and of every block under a non-finite tensor scale, are unspecified
    keep = ((s_ref & 0x7F) != E4M3_NAN).repeat_interleave(8, dim=1) & bool(torch.isfinite(ts_ref))
    assert torch.equal(q[keep], q_ref[keep])
    # the decoded values the sm_90a mixed-input GEMM takes (cast.cu's quantize-dequantize)
    decoded = torch.empty(m, k, dtype=torch.int16)
    harness.h_decode_nvfp4_f16(ptr(q), ptr(s), m, k, ptr(decoded))
    keep = keep.repeat_interleave(2, dim=1)
    assert torch.equal(decoded[keep], decoded_ref.view(torch.int16)[keep])


@pytest.mark.parametrize("ts", (2.0**-30, 0.37, 2.0**30, 0.0))
def test_nvfp4_every_16_bit_amax_given_tensor_scale(harness, ts):
    check_nvfp4(harness, blocks_with_amax(amax_values(), 16, seed=4), torch.tensor(ts))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float32))
def test_nvfp4_awkward_tensors_dynamic_tensor_scale(harness, dtype):
    x = awkward(65, 2080, dtype, seed=5)
    if dtype == torch.float32:
        x = x.clamp(-1e30, 1e30)  # keep amax / 2688 finite
    check_nvfp4(harness, x, None)
    x[3, 7] = float("nan")
    check_nvfp4(harness, x, torch.tensor(0.37))
    check_nvfp4(harness, x, None)  # NaN tensor scale


def test_nvfp4_tensor_scale_every_16_bit_amax(harness):
    amax = amax_values()
    for by_reciprocal, expected in ((0, amax / 2688.0), (1, amax * (torch.tensor(1.0) / 2688.0))):
        got = torch.tensor([harness.h_nvfp4_tensor_scale(a, by_reciprocal) for a in amax[::7].tolist()])
        assert torch.equal(got, expected[::7]) or torch.allclose(got, expected[::7], rtol=0, atol=0, equal_nan=True)
