"""The Hopper (sm_90a) GEMMs: selection, the SASS of the native kernels (CPU CI), and exactness on
an H100 (``gpu`` marker).

Exactness bounds (issue 3): relative Frobenius error against an fp64 product of the dequantized
operands, with block scales over more than 20 binades: float32 output 1e-4 (1e-5 for the
mixed-input kernel), bfloat16 output 4e-3. E8M0 bytes 0 and 254 are included for the skinny kernel;
the mixed-input and Triton kernels decode MXFP8 to bf16, exact for scale bytes 3 to 254 (254 included).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from kernel_checks import fake_capability, family_built, fp64_product, relative_error, run_fresh, sass_functions
from mxfp8_cases import extreme_pair, oracle

import dq_kernels as dq
from dq_kernels import backends, formats, native
from dq_kernels.backends import base, triton_sm90, triton_stock

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-3, torch.float16: 4e-3}
ODD_SHAPES = [(1, 1000, 160), (77, 256, 4160), (129, 1000, 160), (200, 136, 96), (64, 8, 32)]
CUDA = torch.device("cuda", 0)


def on_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


# ----------------------------------------------------------------------------------------------
# Selection (no GPU needed: the capability is faked)
# ----------------------------------------------------------------------------------------------


needs_sm90_family = pytest.mark.skipif(
    not family_built(native.SM90_FAMILY), reason="the native library has no sm90_gemm family"
)
MM_OPS = ("mxfp8_mm", "nvfp4_mm", "nvfp4_weight_only_mm")


@needs_sm90_family
def test_cutlass_on_hopper_runs_every_m_and_auto_takes_it_outside_triton_range(monkeypatch):
    """On 9.0, cutlass runs every mm op at any M (the skinny kernels up to M = 64, the mixed-input
    kernel above); auto takes it up to the measured crossover of each op, triton_sm90 from there to
    M = 64, and cutlass again above (MXFP8 up to M = 2048, decode_cublas above)."""
    fake_capability(monkeypatch, (9, 0))
    for op in MM_OPS:
        limit = backends.sm90_skinny_best_max_m(op, 3072, 3072)
        assert backends.select(op, CUDA, limit, 3072, 3072).spec.name == "cutlass"
        if limit < native.SM90_SKINNY_MAX_M:
            assert backends.select(op, CUDA, limit + 1, 3072, 3072).spec.name != "cutlass"
        assert backends.select(op, CUDA, native.SM90_SKINNY_MAX_M + 1, 3072, 3072).spec.name == "cutlass"
        large = "decode_cublas" if op == "mxfp8_mm" else "cutlass"  # MXFP8 above M = 2048 (backend-selection.md)
        assert backends.select(op, CUDA, backends.SM90_MXFP8_DECODE_CUBLAS_MIN_M - 1, 3072, 3072).spec.name == "cutlass"
        assert backends.select(op, CUDA, 4096, 3072, 3072).spec.name == large
        assert backends.select(op, CUDA, 64, 3072, 3072, "cutlass").spec.name == "cutlass"


def test_cutlass_on_hopper_needs_the_sm90_family(monkeypatch):
    """A library built without 90a must not be offered on an H100, and says why."""
    fake_capability(monkeypatch, (9, 0))
    info = {"families": {native.SM100_FAMILY: ["100a"]}, "archs": ["100a"]}
    monkeypatch.setattr(native, "status", lambda: (True, "loaded"))
    monkeypatch.setattr(native, "build_info", lambda: info)
    with pytest.raises(backends.BackendUnavailableError, match="without the sm90_gemm kernel family"):
        backends.select("mxfp8_mm", CUDA, 4096, 3072, 3072, "cutlass")
    assert backends.select("mxfp8_mm", CUDA, 4096, 3072, 3072).spec.name != "cutlass"


# ----------------------------------------------------------------------------------------------
# The SASS of the sm_90a kernels (CPU CI: the library is built there)
# ----------------------------------------------------------------------------------------------


@needs_sm90_family
def test_sm90_mixed_sass_runs_on_hgmma_with_the_weight_in_registers():
    """Every instance of the mixed-input kernel computes with wgmma (HGMMA, bf16 or f16 into
    float32) whose A operand is registers (the decoded weight) and B a shared-memory descriptor:
    3 (weight format, MMA dtype) kinds x 3 token tiles x 3 output dtypes x 2 K loops (whole or split
    tiles, stream-K), no mma.sync fallback. The epilogue stages 16-bit outputs with stmatrix (STSM)
    and float32 ones element by element."""
    functions = sass_functions(native.LIBRARY_PATH, "sm_90a")
    kernels = {name: sass for name, sass in functions.items() if "mixed_gemm_kernel" in name}
    assert len(kernels) == 54
    for name, sass in kernels.items():
        bf16 = re.search(r"FormatE\dELb(\d)E", name).group(1) == "1"  # kBf16, the parameter after the format
        tokens = re.search(r"ELi(\d+)E", name).group(1)
        dtype = r"\.BF16" if bf16 else r"(?!\.BF16)"
        assert re.search(rf"\bHGMMA\.64x{tokens}x16\.F32{dtype} R\d+, R\d+, gdesc\[", sass), name
        assert not re.search(r"\b(HMMA|QGMMA)\b", sass), name
        out_16_bit = re.search(rf"ELi{tokens}E(6__half|13__nv_bfloat16)Lb", name) is not None
        assert bool(re.search(r"\bSTSM\b", sass)) == out_16_bit, name


@needs_sm90_family
def test_sm90_skinny_sass_runs_on_mma():
    """Every instance of the skinny kernel computes with mma.sync m16n8k16 (f16, or bf16 for a bf16
    W4A16 activation) into float32: 4 (weight, activation) kinds x 4 token tiles x 3 output dtypes,
    and the fused Linears' 2 formats x 2 activation dtypes (the output's) x 4 token tiles."""
    functions = sass_functions(native.LIBRARY_PATH, "sm_90a")
    kernels = {name: sass for name, sass in functions.items() if "skinny_gemm_kernel" in name}
    assert len(kernels) == 48 + 16
    for name, sass in kernels.items():
        bf16 = "ActivationE1" in name  # Activation::kBf16
        assert re.search(r"\bHMMA\.16816\.F32\.BF16\b" if bf16 else r"\bHMMA\.16816\.F32\b(?!\.BF16)", sass), name


# ----------------------------------------------------------------------------------------------
# Exactness on an H100
# ----------------------------------------------------------------------------------------------

needs_hopper_kernel = pytest.mark.skipif(
    not (on_hopper() and family_built(native.SM90_FAMILY)), reason="needs an sm_90 GPU and the sm90_gemm family"
)


def run(backend, a_q, a_s, b_q, b_s, bias=None, out_dtype=torch.bfloat16):
    args = [t.to(CUDA) for t in (a_q, a_s, b_q, b_s)]
    bias = None if bias is None else bias.to(CUDA)
    return dq.ops.mxfp8_mm(*args, bias=bias, out_dtype=out_dtype, backend=backend)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_exact_in_the_documented_domain(out_dtype):
    """Scale bytes from 3 to 254 (bf16 holds e4m3 x 2^(e - 127) exactly there), pairs of blocks
    whose scales multiply to 2^0 from both ends of that range."""
    operands = extreme_pair(256, 384, 1024, seed=0, lowest_byte=3)
    out = run("cutlass", *operands, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert torch.isfinite(out).all()
    assert relative_error(out, oracle(*operands)) < TOLERANCE[out_dtype]


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m, n, k", ODD_SHAPES)
def test_odd_shapes_with_bias(m, n, k):
    operands = extreme_pair(m, n, k, seed=m + n + k, lowest_byte=3)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 100
    out = run("cutlass", *operands, bias=bias, out_dtype=torch.float32)
    assert relative_error(out, oracle(*operands, bias)) < TOLERANCE[torch.float32]


@pytest.mark.gpu
@needs_hopper_kernel
def test_float16_output():
    """Ordinary quantized data (the extreme cases overflow float16's range)."""
    g = torch.Generator().manual_seed(4)
    a_q, a_s = formats.quantize_mxfp8(torch.randn(300, 512, generator=g))
    b_q, b_s = formats.quantize_mxfp8(torch.randn(264, 512, generator=g))
    out = run("cutlass", a_q, a_s, b_q, b_s, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert relative_error(out, oracle(a_q, a_s, b_q, b_s)) < TOLERANCE[torch.float16]


@pytest.mark.gpu
@needs_hopper_kernel
def test_large_flux_shape():
    """4096 x 3072 x 3072 from quantized random activations and weights, against fp64 (the
    mixed-input kernel: bf16 products, float32 sums)."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    a_q, a_s = dq.ops.quantize_mxfp8(torch.randn(4096, 3072, device=CUDA, generator=g, dtype=torch.bfloat16))
    b_q, b_s = dq.ops.quantize_mxfp8(torch.randn(3072, 3072, device=CUDA, generator=g, dtype=torch.bfloat16) * 0.02)
    out = dq.ops.mxfp8_mm(a_q, a_s, b_q, b_s, out_dtype=torch.float32, backend="cutlass")
    assert relative_error(out, oracle(a_q, a_s, b_q, b_s)) < TOLERANCE[torch.float32]


def with_nan_padding(s: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The same swizzled scales with every padding byte (rows past ``rows``, columns past ``cols``)
    set to 255, E8M0's NaN."""
    rows_pad, cols_pad = formats.swizzled_scale_shape(rows, cols)
    full = torch.full((rows_pad, cols_pad), 255, dtype=torch.uint8)
    full[:rows, :cols] = formats.from_blocked(s, rows, cols)
    return formats.to_blocked(full)


@pytest.mark.gpu
@needs_hopper_kernel
def test_padding_bytes_are_never_read():
    """K = 160 leaves 3 padded scale columns per row block; NaN bytes there must change nothing."""
    a_q, a_s, b_q, b_s = extreme_pair(130, 136, 160, seed=3, lowest_byte=3)
    clean = run("cutlass", a_q, a_s, b_q, b_s, out_dtype=torch.float32)
    dirty_a_s, dirty_b_s = with_nan_padding(a_s, 130, 5), with_nan_padding(b_s, 136, 5)
    dirty = run("cutlass", a_q, dirty_a_s, b_q, dirty_b_s, out_dtype=torch.float32)
    assert torch.equal(clean, dirty)


# ----------------------------------------------------------------------------------------------
# The Triton kernels: triton_sm90 (mixed input) and triton_stock (tl.dot_scaled)
# ----------------------------------------------------------------------------------------------

TRITON_BACKENDS = ("triton_sm90", "triton_stock")


def triton_run(name, a_q, a_s, b_q, b_s, bias, out_dtype):
    """The backend's kernel on the operands' device (CPU tensors: the interpreter)."""
    bias = None if bias is None else bias.to(a_q.device, torch.float32)
    if name == "triton_sm90":
        a = triton_sm90.decode_activation("mxfp8", a_q, a_s)
        return triton_sm90.weight_decoded_mm("mxfp8", a, b_q, b_s, None, None, bias, out_dtype)
    return triton_stock.dot_scaled_mm(a_q, a_s, b_q, b_s, bias, out_dtype)


@pytest.mark.parametrize("name", TRITON_BACKENDS)
@pytest.mark.parametrize("m, n, k", [(77, 136, 160), (5, 72, 96), (129, 64, 256)])
def test_triton_kernels_interpreted(name, m, n, k):
    """Under TRITON_INTERPRET=1 on the CPU (on a GPU machine: on the GPU). Scale bytes from 3 up:
    the domain where both kernels are exact (triton_sm90 decodes to bf16; the stock kernel reads byte
    0 as zero on Hopper)."""
    pytest.importorskip("triton")
    device = run_device()
    operands = [t.to(device) for t in extreme_pair(m, n, k, seed=k, lowest_byte=3)]
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2))
    out = triton_run(name, *operands, bias, torch.float32)
    assert relative_error(out, oracle(*operands, bias)) < TOLERANCE[torch.float32]


AOT_SCRIPT = r"""
import sys, torch
from dq_kernels import formats
from dq_kernels.backends import triton_sm90

fmt, m, n, k = sys.argv[1], int(sys.argv[2]), 3072, 3072
a = torch.randn(m, k).bfloat16()
if fmt == "mxfp8":
    (b_q, b_s), alpha = formats.quantize_mxfp8(torch.randn(n, k)), None
else:
    b_q, b_s, alpha = formats.quantize_nvfp4(torch.randn(n, k))
out = torch.empty(m, n, dtype=torch.bfloat16)
tiles = triton_sm90.tiles_for(fmt, m, n, k)
args, constexprs, options, grid = triton_sm90.kernel_arguments(fmt, a, b_q, b_s, alpha, torch.randn(n).bfloat16(), out, tiles)
ptx = aot_compile(triton_sm90._kernel(), args, constexprs, options, 90).asm["ptx"]
print("\n".join(line.strip() for line in ptx.splitlines() if "wgmma.mma_async" in line))
# ptxas's verdict on the wgmma pipeline (C7515: it serializes every wgmma), with Triton's own ptxas
try:
    import subprocess, tempfile
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as d:
        open(f"{d}/k.ptx", "w").write(ptx)
        log = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", f"{d}/k.ptx", "-o", f"{d}/k.cubin"],
                             capture_output=True, text=True)
    print("ptxas: " + ("failed" if log.returncode else "serialized" if "C7515" in log.stdout + log.stderr else "pipelined"))
except ImportError:  # another Triton layout
    print("ptxas: unknown")
"""


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
@pytest.mark.parametrize("m", [1, 64, 512, 4096])
def test_triton_sm90_mma_is_a_bf16_wgmma_with_the_chosen_weight_operand(fmt, m):
    """Compiled for sm_90 (no GPU needed): every MMA is a bf16 wgmma. Where the tiles keep the
    decoded weight in registers, its A operand is a register list; otherwise both operands are
    shared-memory descriptors, and ptxas keeps those wgmmas pipelined (with the register operand it
    may serialize them, warning C7515, as it did for every Triton 3.6 build we compiled: why large M
    goes through shared memory)."""
    *wgmmas, verdict = run_fresh(AOT_SCRIPT, fmt, str(m)).strip().splitlines()
    assert wgmmas
    in_registers = triton_sm90.tiles_for(fmt, m, 3072, 3072).weight_in_registers
    assert verdict != "ptxas: failed"
    if not in_registers and verdict != "ptxas: unknown":
        assert verdict == "ptxas: pipelined"
    a_operand = r"\{%r\d+" if in_registers else r"%rd\d+"
    for line in wgmmas:
        assert re.match(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16 \{[^}]*\}, " + a_operand, line), line


@pytest.mark.gpu
@pytest.mark.skipif(not on_hopper(), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, n, k", ODD_SHAPES + [(4096, 3072, 3072), (64, 1024, 3072), (16, 18432, 3072), (16, 3072, 3072)])
def test_triton_sm90_exact_on_hopper(m, n, k, out_dtype):
    """Every tile configuration tiles_for picks, three launches each (a wrong configuration once
    passed a single launch and failed the next)."""
    operands = [t.to(CUDA) for t in extreme_pair(m, n, k, seed=m * n, lowest_byte=3)]
    expected = oracle(*operands)
    for _ in range(3):
        out = run("triton_sm90", *operands, out_dtype=out_dtype)
        assert relative_error(out, expected) < TOLERANCE[out_dtype]


@pytest.mark.gpu
@pytest.mark.skipif(not on_hopper(), reason="needs an sm_90 GPU")
def test_triton_sm90_on_hopper_is_exact_in_its_documented_domain():
    """Scale bytes from 3 up, 254 included (the domain the cutlass mixed-input kernel shares)."""
    operands = extreme_pair(256, 384, 1024, seed=0, lowest_byte=3)
    out = run("triton_sm90", *operands, out_dtype=torch.float32)
    assert relative_error(out, oracle(*operands)) < TOLERANCE[torch.float32]


# ----------------------------------------------------------------------------------------------
# NVFP4 on Hopper (issue 4): W4A4 and W4A16 in triton_sm90
# ----------------------------------------------------------------------------------------------

NVFP4_TOLERANCE = 1e-5  # float32 output against fp64 (issue 4)


def nvfp4_operands(m: int, n: int, k: int, seed: int):
    """Random NVFP4 activation and weight (q, s, tensor scale each), block scales spread by a factor
    of 2^+-6 across rows and columns."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-6, 7, (m, 1), generator=g).float())
    b = torch.randn(n, k, generator=g) * torch.exp2(torch.randint(-6, 7, (1, k), generator=g).float())
    return formats.quantize_nvfp4(a), formats.quantize_nvfp4(b)


def nvfp4_oracle(a, b, bias=None) -> torch.Tensor:
    """fp64 product of the dequantized operands (tensor scales included); ``a`` a quantized triple
    or a high-precision activation (W4A16)."""
    return fp64_product("nvfp4", a, b, bias)


def auto_on_hopper(op: str, m: int, n: int, k: int) -> str:
    """The backend auto picks for an mm op on an H100: cutlass (when built) outside the range of M
    where triton_sm90 is faster."""
    in_triton_range = backends.sm90_skinny_best_max_m(op, n, k) < m <= native.SM90_SKINNY_MAX_M
    return "cutlass" if family_built(native.SM90_FAMILY) and not in_triton_range else "triton_sm90"


def run_device():
    """Where the Triton kernel tests run: the H100, else the interpreter on the CPU (skip on other GPUs)."""
    if on_hopper():
        return CUDA
    if not base.triton_interpreted():
        pytest.skip("triton_sm90 runs on sm_90 or under TRITON_INTERPRET=1; this machine has another GPU")
    return torch.device("cpu")


@pytest.mark.parametrize("m, n, k", [(77, 136, 160), (5, 72, 256), (129, 64, 512)])
def test_triton_sm90_nvfp4_w4a4(m, n, k):
    """Interpreted on the CPU (on an H100: on the GPU)."""
    pytest.importorskip("triton")
    (a_q, a_s, a_ts), b = nvfp4_operands(m, n, k, seed=m + k)
    device = run_device()
    b_q, b_s, b_ts = (t.to(device) for t in b)
    a = triton_sm90.decode_activation("nvfp4", a_q.to(device), a_s.to(device))
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3))
    out = triton_sm90.weight_decoded_mm("nvfp4", a, b_q, b_s, a_ts.to(device), b_ts, bias.to(device), torch.float32)
    assert relative_error(out, nvfp4_oracle((a_q, a_s, a_ts), b, bias)) < NVFP4_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n, k", [(1, 136, 160), (16, 72, 256), (77, 64, 512)])
def test_triton_sm90_nvfp4_w4a16(m, n, k, dtype):
    pytest.importorskip("triton")
    _, b = nvfp4_operands(m, n, k, seed=n + k)
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(5)).to(dtype)
    device = run_device()
    b_q, b_s, b_ts = (t.to(device) for t in b)
    out = triton_sm90.weight_decoded_mm("nvfp4", a.to(device), b_q, b_s, None, b_ts, None, torch.float32)
    assert relative_error(out, nvfp4_oracle(a, b)) < NVFP4_TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not on_hopper(), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n, k", ODD_SHAPES + [(4096, 3072, 3072), (16, 18432, 3072)])
def test_nvfp4_weight_only_on_hopper(m, n, k, dtype):
    """W4A16 through the op on an H100 (auto's choice there): bf16/fp16 activation and output."""
    _, (b_q, b_s, b_ts) = [tuple(t.to(CUDA) for t in op) for op in nvfp4_operands(m, n, k, seed=k)]
    bias = torch.randn(n, device=CUDA)
    a = torch.randn(m, k, device=CUDA, dtype=dtype)
    assert backends.select("nvfp4_weight_only_mm", CUDA, m, n, k).spec.name == auto_on_hopper("nvfp4_weight_only_mm", m, n, k)
    expected = nvfp4_oracle(a, (b_q, b_s, b_ts), bias)
    for _ in range(3):
        out = dq.ops.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias=bias)
        assert out.dtype == dtype
        assert relative_error(out, expected) < 4e-3


W4A4_SHAPES = ODD_SHAPES + [(77, 256, 4096), (4096, 3072, 3072), (16, 18432, 3072)]


@pytest.mark.gpu
@pytest.mark.skipif(not on_hopper(), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("m, n, k", W4A4_SHAPES)
def test_nvfp4_w4a4_on_hopper(m, n, k):
    """W4A4 through the op (auto's choice on Hopper), fp32 and bf16 output. Ten launches: a
    Triton pipelining race of an earlier version (scales gathered by plain loads) showed here as
    occasional wrong results at 77 x 256 x 4160 (now cutlass's mixed-input kernel runs it)."""
    assert backends.select("nvfp4_mm", CUDA, m, n, k).spec.name == auto_on_hopper("nvfp4_mm", m, n, k)
    (a_q, a_s, a_ts), (b_q, b_s, b_ts) = [tuple(t.to(CUDA) for t in op) for op in nvfp4_operands(m, n, k, seed=k)]
    bias = torch.randn(n, device=CUDA)
    expected = nvfp4_oracle((a_q, a_s, a_ts), (b_q, b_s, b_ts), bias)
    for _ in range(10):
        out = dq.ops.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias=bias, out_dtype=torch.float32)
        assert relative_error(out, expected) < NVFP4_TOLERANCE
    out = dq.ops.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias=bias, out_dtype=torch.bfloat16)
    assert relative_error(out, expected) < 4e-3


TILE_VARIANTS = {  # variant -> format -> the tiles tiles_for picks (split-K: 3 splits, to leave a remainder)
    "split-K": lambda fmt: dataclasses.replace(triton_sm90.tiles_for(fmt, 16, 3072, 3072), split_k=3),
    "weight via shared memory": lambda fmt: triton_sm90.tiles_for(fmt, 4096, 3072, 3072),
}


@pytest.mark.parametrize("variant", list(TILE_VARIANTS))
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_triton_sm90_tile_variants(monkeypatch, fmt, variant):
    """The split-K path (atomics into a float32 buffer, epilogue on the host) and the large-M dot
    (decoded weight through shared memory) give the same product, on shapes that leave partial
    tiles in every dimension."""
    pytest.importorskip("triton")
    tiles = TILE_VARIANTS[variant](fmt)
    assert tiles.split_k == 3 or not tiles.weight_in_registers
    monkeypatch.setattr(triton_sm90, "tiles_for", lambda f, m, n, k: tiles)
    device = run_device()
    m, n, k = 77, 136, 5 * tiles.block_k - 32  # 5 K steps (over 3 splits), the last one partial
    bias = torch.randn(n, generator=torch.Generator().manual_seed(6)).bfloat16()  # a model's bias dtype
    if fmt == "mxfp8":
        operands = [t.to(device) for t in extreme_pair(m, n, k, seed=7, lowest_byte=3)]
        a = triton_sm90.decode_activation("mxfp8", *operands[:2])
        out = triton_sm90.weight_decoded_mm("mxfp8", a, *operands[2:], None, None, bias.to(device), torch.bfloat16)
        expected = oracle(*operands, bias)
    else:
        (a_q, a_s, a_ts), b = nvfp4_operands(m, n, k, seed=7)
        b_q, b_s, b_ts = (t.to(device) for t in b)
        a = triton_sm90.decode_activation("nvfp4", a_q.to(device), a_s.to(device))
        out = triton_sm90.weight_decoded_mm("nvfp4", a, b_q, b_s, a_ts.to(device), b_ts, bias.to(device), torch.bfloat16)
        expected = nvfp4_oracle((a_q, a_s, a_ts), b, bias)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, expected) < TOLERANCE[torch.bfloat16]


# ----------------------------------------------------------------------------------------------
# The skinny kernels (csrc/sm90_skinny_gemm.cu, cutlass on 9.0 for M <= 64) on an H100
# ----------------------------------------------------------------------------------------------

SKINNY_SHAPES = [
    (1, 1000, 160), (7, 256, 4160), (16, 3072, 3072), (32, 136, 4160), (33, 136, 96), (64, 8, 32), (16, 18432, 3072),
]


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m, n, k", SKINNY_SHAPES)
def test_skinny_mxfp8_exact(m, n, k):
    """Scales over 24 binades with E8M0 bytes 0 and 254, bias, float32 and bfloat16 output."""
    operands = [t.to(CUDA) for t in extreme_pair(m, n, k, seed=m + n + k)]
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 100
    expected = oracle(*operands, bias)
    for out_dtype in (torch.float32, torch.bfloat16):
        out = run("cutlass", *operands, bias=bias, out_dtype=out_dtype)
        assert out.dtype == out_dtype
        assert relative_error(out, expected) < TOLERANCE[out_dtype]


@pytest.mark.gpu
@needs_hopper_kernel
def test_skinny_mxfp8_never_reads_padding_bytes():
    """K = 160: the last K chunk is partial and 3 padded scale columns hold NaN bytes; the padded
    rows of A's scales too (M = 7)."""
    a_q, a_s, b_q, b_s = extreme_pair(7, 136, 160, seed=3)
    clean = run("cutlass", a_q, a_s, b_q, b_s, out_dtype=torch.float32)
    dirty = run("cutlass", a_q, with_nan_padding(a_s, 7, 5), b_q, with_nan_padding(b_s, 136, 5), out_dtype=torch.float32)
    assert torch.isfinite(clean).all()
    assert torch.equal(clean, dirty)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m, n, k", SKINNY_SHAPES)
def test_skinny_nvfp4_w4a4_exact(m, n, k):
    (a_q, a_s, a_ts), (b_q, b_s, b_ts) = [tuple(t.to(CUDA) for t in op) for op in nvfp4_operands(m, n, k, seed=k)]
    bias = torch.randn(n, device=CUDA)
    expected = nvfp4_oracle((a_q, a_s, a_ts), (b_q, b_s, b_ts), bias)
    for out_dtype, tolerance in ((torch.float32, NVFP4_TOLERANCE), (torch.bfloat16, 4e-3)):  # float16 overflows here
        out = dq.ops.nvfp4_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias=bias, out_dtype=out_dtype, backend="cutlass")
        assert out.dtype == out_dtype
        assert relative_error(out, expected) < tolerance


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n, k", SKINNY_SHAPES)
def test_skinny_nvfp4_w4a16_exact(m, n, k, dtype):
    """float32 output through the native entry point (the op returns the activation's dtype)."""
    _, (b_q, b_s, b_ts) = [tuple(t.to(CUDA) for t in op) for op in nvfp4_operands(m, n, k, seed=n)]
    a = torch.randn(m, k, device=CUDA).to(dtype)
    bias = torch.randn(n, device=CUDA)
    expected = nvfp4_oracle(a, (b_q, b_s, b_ts), bias)
    out = torch.empty(m, n, device=CUDA)
    native.sm90_nvfp4_w4a16_skinny_mm(a, b_q, b_s, b_ts.reshape(()), bias, out)
    assert relative_error(out, expected) < NVFP4_TOLERANCE
    via_op = dq.ops.nvfp4_weight_only_mm(a, b_q, b_s, b_ts, bias=bias, backend="cutlass")
    assert via_op.dtype == dtype
    assert torch.equal(via_op, out.to(dtype))


# ----------------------------------------------------------------------------------------------
# The mixed-input kernel (csrc/sm90_mixed_gemm.cu, cutlass on 9.0 above M = 64) on an H100
# ----------------------------------------------------------------------------------------------

MIXED_SHAPES = [(65, 1000, 160), (77, 256, 4160), (129, 136, 96), (300, 8, 32), (513, 3072, 3072)]


def mixed_operands(kind: str, m: int, n: int, k: int, seed: int):
    """(a, b_q, b_s, a_ts, b_ts, expected fp64 product without bias) for the mixed kernel on the GPU:
    kind "mxfp8" (bf16 decode of an MXFP8 activation, scale bytes from 3 up), "w4a4" (f16 decode of
    an NVFP4 activation, its tensor scale as a_ts) or "w4a16_bf16" / "w4a16_fp16"."""
    if kind == "mxfp8":
        a_q, a_s, b_q, b_s = (t.to(CUDA) for t in extreme_pair(m, n, k, seed=seed, lowest_byte=3))
        return formats.dequantize_mxfp8(a_q, a_s, torch.bfloat16), b_q, b_s, None, None, oracle(a_q, a_s, b_q, b_s)
    (a_q, a_s, a_ts), b = [tuple(t.to(CUDA) for t in op) for op in nvfp4_operands(m, n, k, seed=seed)]
    if kind == "w4a4":
        a = formats.dequantize_nvfp4(a_q, a_s, torch.ones((), device=CUDA), torch.float16)
        return a, *b[:2], a_ts, b[2], nvfp4_oracle((a_q, a_s, a_ts), b)
    a = torch.randn(m, k, device=CUDA).to(torch.bfloat16 if kind == "w4a16_bf16" else torch.float16)
    return a, *b[:2], None, b[2], nvfp4_oracle(a, b)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("kind", ["mxfp8", "w4a4", "w4a16_bf16", "w4a16_fp16"])
@pytest.mark.parametrize("m, n, k", MIXED_SHAPES)
def test_mixed_kernel_exact_with_every_token_tile(kind, m, n, k):
    """Each token tile (64, 128, 256) on shapes with partial tiles in M, N and K (K = 96 and 160:
    a partial last K step and scale tile), bias, float32 output within 1e-5 of fp64, bf16 within
    4e-3; the tile the kernel picks itself gives the same result as the one forced."""
    a, b_q, b_s, a_ts, b_ts, product = mixed_operands(kind, m, n, k, seed=m + n + k)
    bias = torch.randn(n, device=CUDA) * 10
    expected = product + bias.cpu().double()
    picked = native.sm90_mixed_plan(m, n, k).tokens
    assert picked in (64, 128, 256)
    for out_dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 4e-3)):
        results = []
        for tokens in (0, 64, 128, 256):
            out = torch.empty(m, n, device=CUDA, dtype=out_dtype)
            if kind == "mxfp8":
                native.sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, out, tokens)
            else:
                native.sm90_nvfp4_mixed_mm(a, b_q, b_s, a_ts, b_ts, bias, out, tokens)
            assert relative_error(out, expected) < tolerance, (out_dtype, tokens)
            results.append(out)
        assert torch.equal(results[0], results[1 + (64, 128, 256).index(picked)])  # tokens = 0 runs the picked tile


SHARED_TILE_CASES = {  # id -> (token tile, M, weight tiles as a function of the SM count, K, stream-K?)
    "50 tiles of 64 K steps (the last partial), stream-K: 2-4 CTAs per tile": (64, 128, lambda sms: 25, 4064, True),
    "a wave + 4 tiles, stream-K: CTAs end one tile and begin the next": (64, 64, lambda sms: sms + 4, 2048, True),
    "a wave + 4 tiles of operands beyond L2: each split in 4, the last K step partial": (256, 64, lambda sms: sms + 4, 6112, False),
    "2 waves + 44 tiles: whole tiles first, then each split in 3": (128, 128, lambda sms: 2 * sms + 44, 2080, False),
    "512 x 3072 x 3072: each tile split in 2": (256, 512, lambda sms: 24, 3072, False),
}


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("kind", ["mxfp8", "w4a4", "w4a16_bf16"])
@pytest.mark.parametrize("case", list(SHARED_TILE_CASES))
def test_mixed_kernel_shared_tiles_match_whole_tiles(kind, case):
    """Tiles that leave the last wave partly idle are shared along K by several CTAs (each split
    in parts, or stream-K), whose sums meet in the workspace: within 1e-5 of fp64 like the
    whole-tile run (share_tiles=False), and as close to it (float32 sums in another order)."""
    tokens, m, weight_tiles, k, stream_k = SHARED_TILE_CASES[case]
    sms = torch.cuda.get_device_properties(CUDA).multi_processor_count
    n = 128 * weight_tiles(sms)
    plan = native.sm90_mixed_plan(m, n, k, tokens=tokens)
    assert plan.tokens == tokens and 0 < plan.shared_ctas <= sms and plan.shared_tiles > 0 and plan.workspace_bytes > 0
    assert (plan.parts == 0) == stream_k
    a, b_q, b_s, a_ts, b_ts, product = mixed_operands(kind, m, n, k, seed=7)
    bias = torch.randn(n, device=CUDA)
    expected = product + bias.cpu().double()
    outs = []
    for share_tiles in (True, False):
        out = torch.empty(m, n, device=CUDA)
        if kind == "mxfp8":
            native.sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, out, tokens, share_tiles=share_tiles)
        else:
            native.sm90_nvfp4_mixed_mm(a, b_q, b_s, a_ts, b_ts, bias, out, tokens, share_tiles=share_tiles)
        assert relative_error(out, expected) < 1e-5, share_tiles
        outs.append(out)
    assert relative_error(outs[0], outs[1].double().cpu()) < 1e-5


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("m", [65, 300, 4096])
def test_linear_ops_hand_the_mixed_kernel_a_decoded_activation(m):
    """Above the skinny range on 9.0 the linear ops round x to the format's grid and decode it in one
    cast pass (the quantized activation is never written): bit for bit what cast + mm give."""
    n, k = 272, 320
    x = torch.randn(m, k, device=CUDA, dtype=torch.bfloat16) * 3
    w = torch.randn(n, k, device=CUDA)
    bias = torch.randn(n, device=CUDA)
    assert dq.get_backend("cutlass").takes_decoded_activation("mxfp8_mm", x.device, m)
    assert hasattr(backends.select("quantize_mxfp8", x.device, m, k, k), "quantize_dequantize_mxfp8")
    b_q, b_s = dq.quantize_mxfp8(w)
    expected = dq.mxfp8_mm(*dq.quantize_mxfp8(x), b_q, b_s, bias, out_dtype=x.dtype, backend="cutlass")
    assert torch.equal(dq.mxfp8_linear(x, b_q, b_s, bias, mm_backend="cutlass"), expected)
    b_q, b_s, b_t = dq.quantize_nvfp4(w)
    for activation_scale in (None, torch.tensor(0.05, device=CUDA)):
        x_q = dq.quantize_nvfp4(x, activation_scale)
        expected = dq.nvfp4_mm(*x_q, b_q, b_s, b_t, bias, out_dtype=x.dtype, backend="cutlass")
        assert torch.equal(dq.nvfp4_linear(x, b_q, b_s, b_t, activation_scale, bias, mm_backend="cutlass"), expected)


@pytest.mark.gpu
@needs_hopper_kernel
def test_mixed_kernel_never_reads_padding_bytes():
    """K = 160 and N = 136: NaN in every padding byte of the weight's scales (rows past N, scale
    columns past K) changes nothing, for MXFP8 and NVFP4 weights."""
    for kind, cols in (("mxfp8", 5), ("w4a4", 10)):
        a, b_q, b_s, a_ts, b_ts, _ = mixed_operands(kind, 130, 136, 160, seed=3)
        dirty_s = with_nan_padding(b_s.cpu().view(torch.uint8), 136, cols).to(CUDA).view(b_s.dtype)
        outs = []
        for s in (b_s, dirty_s):
            out = torch.empty(130, 136, device=CUDA)
            if kind == "mxfp8":
                native.sm90_mxfp8_mixed_mm(a, b_q, s, None, out)
            else:
                native.sm90_nvfp4_mixed_mm(a, b_q, s, a_ts, b_ts, None, out)
            outs.append(out)
        assert torch.equal(*outs), kind


def placed(t: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """t copied to the start of ``buffer`` (uint8 on the GPU): a view of t's dtype and shape."""
    view = buffer[: t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    return view.copy_(t)


@pytest.mark.gpu
@needs_hopper_kernel
@pytest.mark.parametrize("kind", ["mxfp8", "w4a4"])
def test_mixed_kernel_kept_maps_follow_shape_and_content_at_one_address(kind):
    """The kernel keeps its TMA maps per thread, keyed by address and shape: operands of another
    shape, then of the first shape with other values, placed at the same addresses (views of one
    buffer per operand) give bit for bit what the same operands in memory of their own give."""
    buffers = [torch.empty(1 << 20, dtype=torch.uint8, device=CUDA) for _ in range(3)]
    for n, k, seed in ((136, 160, 1), (272, 320, 2), (136, 160, 3)):
        a, b_q, b_s, a_ts, b_ts, _ = mixed_operands(kind, 130, n, k, seed=seed)
        outs = []
        for a_, b_q_, b_s_ in ((a, b_q, b_s), tuple(placed(t, buffer) for t, buffer in zip((a, b_q, b_s), buffers))):
            out = torch.empty(130, n, device=CUDA)
            if kind == "mxfp8":
                native.sm90_mxfp8_mixed_mm(a_, b_q_, b_s_, None, out)
            else:
                native.sm90_nvfp4_mixed_mm(a_, b_q_, b_s_, a_ts, b_ts, None, out)
            outs.append(out)
        assert torch.equal(*outs), (n, k, seed)


@pytest.mark.gpu
@needs_hopper_kernel
def test_mixed_kernel_refuses_what_it_cannot_run():
    """MXFP8 needs a bf16 activation (its decoded weight is bf16); the token tile must be one the kernel has."""
    a, b_q, b_s, *_ = mixed_operands("mxfp8", 65, 136, 64, seed=0)
    out = torch.empty(65, 136, device=CUDA)
    with pytest.raises(ValueError, match="a must be a 2-D bfloat16 tensor"):
        native.sm90_mxfp8_mixed_mm(a.half(), b_q, b_s, None, out)
    with pytest.raises(ValueError, match="tokens must be 0, 64, 128 or 256"):
        native.sm90_mxfp8_mixed_mm(a, b_q, b_s, None, out, tokens=96)
