"""Blackwell (sm_100) GEMMs: the ``cutlass`` and ``triton_sm100`` backends.

No Blackwell GPU is at hand, so most of this file proves the kernels without running them on one:

* selection: auto picks them only on the capabilities their specs name (10.x; triton_sm100 also
  12.x), and choosing them anywhere else raises naming the capability (device capabilities are
  faked; nothing runs);
* CUTLASS (needs the native library with the sm100_gemm family): the SASS of every arch it was
  built for (100f by default) holds the block-scaled MMA (UTCQMMA for MXFP8, UTCOMMA for NVFP4)
  and the scale copies (UTCCP); the CUTLASS
  arguments the launch code builds (``dq_sm100_*_mm_plan``, host only) put every scale where
  ``formats.to_blocked`` does (the layout the dequantize kernels run with on an H100), use the
  packed row strides, and are accepted by CUTLASS's ``can_implement`` exactly for the shapes the
  backend spec admits; the C argument checks; on any CUDA GPU (``-m gpu``, an H100 included), the
  host half of a launch for real device tensors (``dq_sm100_*_mm_prepare``: the CUDA driver encodes
  every TMA descriptor from our pointers), for both configs;
* Triton: each kernel, compiled ahead of time for ``GPUTarget("cuda", 100, 32)`` from the very
  arguments the backend launches it with, has ``tcgen05.mma ... block_scale`` and ``tcgen05.cp`` in
  its PTX and fits in sm_100's shared memory; compiled for 120 and 121 with the tiles chosen there,
  only the block-scaled ``mma.sync`` and within 99 KB; the same kernels run under
  ``TRITON_INTERPRET=1`` on the CPU against an fp64 product of the dequantized operands; on a
  Hopper GPU (``-m gpu``), where Triton upcasts ``tl.dot_scaled`` to bf16, the MXFP8 kernel body
  (descriptors, zero fill, persistent loop, epilogue) against fp64;
* on a Blackwell GPU (``-m gpu``): both backends against fp64, and each CUTLASS config on the edge
  shapes, with float32 tolerances that grow with K.
"""

import ctypes
import functools
import json
import os
import re

import pytest
import torch

import dq_kernels as dq
from dq_kernels import backends, formats, native
from dq_kernels.backends import BackendUnavailableError, select, triton_sm100
from kernel_checks import (
    dequantized_f64, fake_capability, family_built, fp64_product, relative_error, run_fresh, sass_functions,
)  # fmt: skip

if not torch.cuda.is_available():
    # The Triton kernels run interpreted on CPU tensors; the variable must be set before triton is
    # first imported (test_triton_cast.py sets it the same way).
    os.environ.setdefault("TRITON_INTERPRET", "1")

SM100_BACKENDS = ("cutlass", "triton_sm100")
OPS = ("mxfp8_mm", "nvfp4_mm")
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
SM100_MAX_SHARED = 232448  # bytes of shared memory per block on sm_100 (227 KB, cudaDevAttrMaxSharedMemoryPerBlockOptin)


def quantized(fmt: str, rows: int, k: int, seed: int):
    """Canonical operands of a random [rows, k] tensor: (q, s) or (q, s, tensor_scale)."""
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    return formats.quantize_mxfp8(x) if fmt == "mxfp8" else formats.quantize_nvfp4(x)


# Exactness bounds of the Hopper issues: relative (Frobenius) error against an fp64 product of the
# dequantized operands.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4e-3}


def blackwell_tolerance(out_dtype: torch.dtype, k: int) -> float:
    """The bound on a Blackwell GPU, whose block-scaled MMAs are not documented to accumulate as
    exactly as float32 adds: (K + 4) * 2^-24 for a float32 output (every one of the K products'
    additions and the epilogue's alpha, bias and rounding may err by 2^-24 of the running sum, in
    the same direction if the MMA truncates), never below the Hopper bound; a 16-bit output's
    rounding dominates (4e-3)."""
    if out_dtype != torch.float32:
        return TOLERANCE[torch.bfloat16]
    return max(TOLERANCE[torch.float32], (k + 4) * 2**-24)

# ----------------------------------------------------------------------------------------------
# Selection: the right arch only
# ----------------------------------------------------------------------------------------------


def test_specs_and_auto_order_on_blackwell():
    for capability in ((10, 0), (10, 3)):
        rank = backends.RANKINGS[capability]("mxfp8_mm", 4096, 3072, 3072)
        assert rank.index("cutlass") < rank.index("triton_sm100") < rank.index("torchao")
    assert backends.get_backend("cutlass").spec.capabilities == ((9, 0), (10, 0), (10, 3))  # 9.0: test_sm90
    assert backends.get_backend("triton_sm100").spec.capabilities == ((10, 0), (10, 3), (12, 0), (12, 1))
    for name in SM100_BACKENDS:
        spec = backends.get_backend(name).spec
        assert set(OPS) <= set(spec.ops) and not spec.cpu and spec.auto


@pytest.mark.parametrize("name", SM100_BACKENDS)
def test_explicit_choice_on_cpu_raises(name):
    with pytest.raises(BackendUnavailableError, match=rf"'{name}' cannot run mxfp8_mm on cpu .*CUDA devices only"):
        select("mxfp8_mm", CPU, 128, 1000, 256, name)
    a_q, a_s = dq.quantize_mxfp8(torch.randn(4, 64))
    with pytest.raises(BackendUnavailableError, match="CUDA devices only"):
        dq.mxfp8_mm(a_q, a_s, a_q, a_s, backend=name)


@pytest.mark.parametrize("capability", [(9, 0), (8, 9), (12, 0)])
@pytest.mark.parametrize("name", SM100_BACKENDS)
def test_explicit_choice_on_another_arch_raises_naming_the_capability(monkeypatch, name, capability):
    """Every op the spec does not allow on this capability raises with the spec's reason, which
    names the capabilities it needs (cutlass runs MXFP8 on 9.0 too: test_sm90.py covers that)."""
    fake_capability(monkeypatch, capability)
    spec = backends.get_backend(name).spec
    have = f"{capability[0]}.{capability[1]}"
    for op in OPS:
        reason = spec.device_reason(CUDA, op)
        if reason is None:
            continue
        wanted = ", ".join(f"{a}.{b}" for a, b in spec.capabilities_for(op))
        assert f"needs compute capability {wanted}; cuda:0 has {have}" in reason
        with pytest.raises(BackendUnavailableError, match=re.escape(reason)):
            select(op, CUDA, 128, 1000, 256, name)


@pytest.mark.parametrize("capability", [(9, 0), (8, 9), (12, 0)])
def test_auto_never_picks_them_on_another_arch(monkeypatch, capability):
    """Auto picks them only for ops their spec allows on this capability (cutlass: MXFP8 on 9.0)."""
    fake_capability(monkeypatch, capability)
    for op in OPS:
        picked = select(op, CUDA, 4096, 3072, 3072).spec.name
        assert picked not in SM100_BACKENDS or backends.get_backend(picked).spec.device_reason(CUDA, op) is None


def test_auto_picks_them_on_blackwell(monkeypatch):
    """What a B200 or B300 user gets from auto: cutlass where its spec admits the capability and the
    library has sm100_gemm code for it (the default 100f build covers 10.0 and 10.3), else
    triton_sm100 when triton is installed."""
    triton_ok = backends.get_backend("triton_sm100").availability()[0]
    cutlass = backends.get_backend("cutlass")
    for capability in ((10, 0), (10, 3)):
        fake_capability(monkeypatch, capability)
        built = family_built(native.SM100_FAMILY) and any(
            native._arch_runs_on(arch, capability) for arch in native.build_info()["families"][native.SM100_FAMILY]
        )
        cutlass_ok = built and cutlass.spec.device_reason(CUDA) is None
        expected = "cutlass" if cutlass_ok else "triton_sm100" if triton_ok else None
        for op in OPS:
            picked = select(op, CUDA, 4096, 3072, 3072).spec.name
            assert picked == expected if expected else picked not in SM100_BACKENDS, (capability, op)


@pytest.mark.parametrize("n, k", [(1001, 256), (1004, 256), (1000, 48), (1000, 80)])
def test_auto_falls_back_on_shapes_they_refuse(monkeypatch, n, k):
    fake_capability(monkeypatch, (10, 0))
    op = "nvfp4_mm"  # 48 and 80 are valid NVFP4 K (multiples of 16) but not multiples of 32
    for name in SM100_BACKENDS:
        assert backends.get_backend(name).spec.shape_reason(op, 128, n, k) is not None
    assert select(op, CUDA, 128, n, k).spec.name not in SM100_BACKENDS


# ----------------------------------------------------------------------------------------------
# CUTLASS: what was built, the SASS, the host-side arguments, the C checks
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def sm100_library() -> ctypes.CDLL:
    ok, why = native.status()
    if not ok:
        pytest.skip(f"the native library is unavailable: {why}")
    if not family_built(native.SM100_FAMILY):
        pytest.skip(f"the native library was built without the {native.SM100_FAMILY} family: {native.build_info()}")
    return native._library().lib


@pytest.mark.skipif(os.environ.get("DQ_KERNELS_EXPECT_NATIVE") != "1", reason="DQ_KERNELS_EXPECT_NATIVE is not 1")
def test_sm100_family_is_built_when_expected():
    """A default build compiles the family once, for 100f: one cubin for 10.0 and 10.3."""
    ok, why = native.status()
    assert ok, why
    info = native.build_info()
    if "100f" in info["archs"]:
        assert "100f" in info["families"][native.SM100_FAMILY]
    assert backends.get_backend("cutlass").availability() == (True, "")


def test_sass_has_the_block_scaled_mma(sm100_library):
    """For every arch the family was built for (100f by default; 100a or 103a on request)."""
    for arch in native.build_info()["families"][native.SM100_FAMILY]:
        functions = sass_functions(native.LIBRARY_PATH, f"sm_{arch}")
        # The CUTLASS kernels are named by their types: E8M0 scales (ue8m0) for MXFP8, e4m3 (ue4m3) for NVFP4.
        mxfp8 = {name: sass for name, sass in functions.items() if "device_kernel" in name and "float_ue8m0_t" in name}
        nvfp4 = {name: sass for name, sass in functions.items() if "device_kernel" in name and "float_ue4m3_t" in name}
        assert len(mxfp8) == 4 and len(nvfp4) == 4, arch  # {1-SM, 2-SM} x {bf16, fp32 out}
        for sass in mxfp8.values():
            assert re.search(r"\bUTCQMMA\b", sass) and re.search(r"\bUTCCP\b", sass)
            assert not re.search(r"\bUTCOMMA\b", sass)
        for sass in nvfp4.values():  # UTCOMMA.4X on 100a and 100f, UTCOMMA.BLOCK16 on 103a
            assert re.search(r"\bUTCOMMA\b", sass) and re.search(r"\bUTCCP\b", sass)
            assert not re.search(r"\bUTCQMMA\b", sass)
        two_sm = [name for name, sass in {**mxfp8, **nvfp4}.items() if ".2CTA" in sass]
        assert len(two_sm) == 4, arch  # the 2-SM kernels issue the MMA for a CTA pair


PLAN_SHAPES = [(1, 8, 32), (77, 1000, 160), (129, 1000, 4160), (300, 256, 1024), (4096, 3072, 3072)]


@pytest.mark.parametrize("m, n, k", PLAN_SHAPES)
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cutlass_scale_layout_is_to_blocked(sm100_library, fmt, m, n, k):
    """The byte offset CUTLASS's Sm1xxBlkScaledConfig layout gives each (row, scale column) of A and
    B, as the launch code builds it for this problem, is the one formats.to_blocked writes it to."""
    block = formats.FORMATS[fmt].block_size
    plan = native.sm100_mm_plan(fmt, m, n, k, scale_offsets=True)
    for rows, offsets in ((m, plan.sfa_offsets), (n, plan.sfb_offsets)):
        ids = torch.arange(1, rows * (k // block) + 1, dtype=torch.int64).view(rows, k // block)
        swizzled = formats.to_blocked(ids).flatten()  # every scale's id at its byte; padding 0
        assert offsets.shape == ids.shape
        assert torch.equal(swizzled[offsets], ids)


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cutlass_strides_and_configs(sm100_library, fmt):
    for m, n, k in PLAN_SHAPES:
        for out_dtype in ("bfloat16", "float32"):
            # row strides in elements: the packed [M, K], [N, K] and [M, N] of the canonical operands
            assert native.sm100_mm_plan(fmt, m, n, k, out_dtype).strides == (k, k, n)
            for config, name in (("1sm", "1sm_128x128"), ("2sm", "2sm_256x128")):
                assert native.sm100_mm_plan(fmt, m, n, k, out_dtype, config).config == name
    assert native.sm100_mm_plan(fmt, 255, 3072, 3072).config == "1sm_128x128"  # auto: 1-SM below M = 256
    assert native.sm100_mm_plan(fmt, 256, 3072, 3072).config == "2sm_256x128"
    assert backends.get_backend("cutlass").kernel_config(fmt, 4096, 3072, 3072) == "2sm_256x128"


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_spec_shape_limits_are_what_cutlass_accepts(sm100_library, fmt):
    """For bf16 output CUTLASS's can_implement accepts exactly the shapes the spec admits; fp32
    output accepts at least those (its TMA rows need N % 4 only)."""
    spec = backends.get_backend("cutlass").spec
    op = f"{fmt}_mm"
    block = formats.FORMATS[fmt].block_size
    for n in (8, 12, 1000, 1001, 1004, 3072):
        for k in range(block, 321, block):
            admitted = spec.shape_reason(op, 200, n, k) is None
            for out_dtype in ("bfloat16", "float32"):
                try:
                    native.sm100_mm_plan(fmt, 200, n, k, out_dtype)
                    accepted = True
                except ValueError as e:
                    assert "can_implement" in str(e)
                    accepted = False
                assert accepted == admitted if out_dtype == "bfloat16" else accepted >= admitted, (n, k, out_dtype)


def test_c_argument_checks(sm100_library):
    """Bad arguments come back as negative codes before anything touches CUDA (fake pointers)."""
    lib = sm100_library
    p = 256  # a fake, 16-byte aligned "device pointer": never dereferenced on these paths
    mx, nv = lib.dq_sm100_mxfp8_mm, lib.dq_sm100_nvfp4_mm

    def mxfp8(a_q=p, a_s=p, b_q=p, b_s=p, bias=None, out=p, m=128, n=1000, k=256, dtype=1, config=0):
        return mx(a_q, a_s, b_q, b_s, bias, out, m, n, k, dtype, config, None)

    def nvfp4(a_ts=p, b_ts=p, m=128, n=1000, k=256):
        return nv(p, p, a_ts, p, p, b_ts, None, p, m, n, k, 1, 0, None)

    assert mxfp8(a_s=None) == -1 and mxfp8(out=None) == -1
    assert nvfp4(b_ts=None) == -1
    assert mxfp8(m=0) == -2 and mxfp8(k=48) == -2 and mxfp8(n=2**31) == -2
    assert nvfp4(k=40) == -2
    assert mxfp8(dtype=2) == -3  # float16 output: the backend runs float32 and casts
    assert mxfp8(a_q=p + 8) == -4 and mxfp8(b_s=p + 4) == -4 and mxfp8(bias=p + 4) == -4
    assert mxfp8(config=3) == -6
    for code in (-5, -6, -7):
        assert lib.dq_error_string(code).startswith(b"dq_kernels: ")
    # the prepare entry points apply the same checks before anything reaches CUTLASS or the driver
    prepare_mx, prepare_nv = lib.dq_sm100_mxfp8_mm_prepare, lib.dq_sm100_nvfp4_mm_prepare
    assert prepare_mx(p, p, p, None, None, p, 128, 1000, 256, 1, 0) == -1
    assert prepare_mx(p, p, p, p, None, p, 128, 1000, 48, 1, 0) == -2
    assert prepare_mx(p + 8, p, p, p, None, p, 128, 1000, 256, 1, 0) == -4
    assert prepare_mx(p, p, p, p, None, p, 128, 1000, 256, 1, 3) == -6
    assert prepare_nv(p, p, p, p, p, None, None, p, 128, 1000, 256, 1, 0) == -1  # b_ts
    assert prepare_nv(p, p, p, p, p, p, None, p, 128, 1001, 256, 1, 0) == -5  # can_implement: N % 8, bf16 out
    # the plan entry points apply the same checks, plus CUTLASS's can_implement
    plan = lib.dq_sm100_nvfp4_mm_plan
    assert plan(128, 1000, 48, 1, 0, None, None, None) == -5  # K % 32: CUTLASS's fp4 TMA rows
    assert plan(128, 1001, 256, 1, 0, None, None, None) == -5  # N % 8 for bf16 out
    assert plan(128, 1000, 256, 1, 0, None, None, None) == 1


def test_wrapper_rejects_float16_output_and_cpu_tensors(sm100_library):
    a_q, a_s = formats.quantize_mxfp8(torch.randn(4, 64))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        native.sm100_mxfp8_mm(a_q, a_s, a_q, a_s, None, torch.empty(4, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="CUDA device"):
        native.sm100_mxfp8_mm(a_q, a_s, a_q, a_s, None, torch.empty(4, 4, dtype=torch.bfloat16))


def cuda_operands(fmt: str, m: int, n: int, k: int, device: torch.device) -> dict:
    """Canonical operands of random [m, k] and [n, k] tensors on ``device``, as the keyword
    arguments of native.sm100_mm_prepare (a_ts, b_ts for NVFP4), with a float32 bias."""
    a, b = [[t.to(device) for t in quantized(fmt, rows, k, seed=rows + k)] for rows in (m, n)]
    operands = dict(a_q=a[0], a_s=a[1], b_q=b[0], b_s=b[1], bias=torch.randn(n, device=device))
    return operands | (dict(a_ts=a[2], b_ts=b[2]) if fmt == "nvfp4" else {})


PREPARE_SHAPES = [(300, 1000, 160), (1, 1000, 4160), (77, 8, 32), (1, 8, 32), (512, 3072, 3072)]


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["1sm", "2sm"])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cutlass_descriptors_from_the_driver(sm100_library, fmt, config):
    """On any CUDA GPU (an H100 included: nothing is launched): for real device tensors, the sm100
    GEMM's checks, CUTLASS's can_implement and the kernel's parameters, for which the CUDA driver
    encodes the TMA descriptors of A, B, their 5-D-tiled scales and out (dq_sm100_*_mm_prepare).
    M = 300 leaves the 2-SM tile's second CTA pair half empty, M = 1 and K = 32 are the smallest."""
    device = torch.device("cuda", torch.cuda.current_device())
    if fmt == "nvfp4" and torch.cuda.get_device_capability(device)[0] < 10:
        # measured on an H100: the driver refuses NVFP4's 4-bit TMA type and CUTLASS only prints it
        operands = cuda_operands(fmt, *PREPARE_SHAPES[0], device)
        out = torch.empty(PREPARE_SHAPES[0][:2], dtype=torch.bfloat16, device=device)
        with pytest.raises(ValueError, match="nvfp4 needs a Blackwell GPU"):
            native.sm100_mm_prepare(fmt, **operands, out=out, config=config)
        pytest.skip("NVFP4's 4-bit TMA descriptors encode on a Blackwell GPU only (refused above, with the reason)")
    for m, n, k in PREPARE_SHAPES:
        operands = cuda_operands(fmt, m, n, k, device)
        for out_dtype in (torch.float32, torch.bfloat16):
            out = torch.empty(m, n, dtype=out_dtype, device=device)
            native.sm100_mm_prepare(fmt, **operands, out=out, config=config)
            native.sm100_mm_prepare(fmt, **(operands | {"bias": None}), out=out, config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cutlass_prepare_refuses_misaligned_pointers(sm100_library, fmt):
    """A tensor that starts 1 byte past a 16-byte boundary: the wrapper names it, and the C entry
    point, given it anyway, returns DQ_ERR_MISALIGNED (-4) before CUTLASS or the driver see it."""
    device = torch.device("cuda", torch.cuda.current_device())
    m, n, k = 128, 1000, 256
    operands = cuda_operands(fmt, m, n, k, device)
    out = torch.empty(m, n, dtype=torch.bfloat16, device=device)
    shifted = torch.empty(operands["b_q"].numel() + 16, dtype=torch.uint8, device=device)[1:]
    b_q = shifted[: operands["b_q"].numel()].view(operands["b_q"].shape)
    with pytest.raises(ValueError, match="b_q.data_ptr\\(\\) must be 16-byte aligned"):
        native.sm100_mm_prepare(fmt, **(operands | {"b_q": b_q}), out=out)
    pointers = {name: t.data_ptr() for name, t in operands.items()} | {"b_q": b_q.data_ptr()}
    if fmt == "mxfp8":
        names = ("a_q", "a_s", "b_q", "b_s", "bias")
        prepare = sm100_library.dq_sm100_mxfp8_mm_prepare
    else:
        names = ("a_q", "a_s", "a_ts", "b_q", "b_s", "b_ts", "bias")
        prepare = sm100_library.dq_sm100_nvfp4_mm_prepare
    code = prepare(*[pointers[name] for name in names], out.data_ptr(), m, n, k, 1, 0)
    assert code == -4
    assert sm100_library.dq_error_string(code).decode().startswith("dq_kernels: a pointer is not aligned")
    if fmt == "nvfp4" and torch.cuda.get_device_capability(device)[0] < 10:
        return  # the aligned call would "pass" without its 4-bit descriptors (dq_kernels.h)
    aligned = prepare(*[operands[name].data_ptr() for name in names], out.data_ptr(), m, n, k, 1, 0)
    assert aligned == 0, sm100_library.dq_error_string(aligned).decode()


# ----------------------------------------------------------------------------------------------
# Triton: ahead-of-time compilation for sm_100
# ----------------------------------------------------------------------------------------------

# Run by run_fresh: compiles the kernel, for every (format, out dtype, bias, capability) job in the
# JSON list argv[1], from the arguments triton_sm100.kernel_arguments builds for CPU stand-ins of
# the operands, and prints a JSON list of what each PTX holds. One process for all jobs: starting
# one per compilation would cost more than the compilations.
AOT_SCRIPT = r"""
import json, re, sys, torch
from dq_kernels import formats
from dq_kernels.backends import triton_sm100

results = []
for fmt_name, out_dtype, with_bias, capability, k in json.loads(sys.argv[1]):
    m, n = 256, 1024
    quantize = formats.quantize_mxfp8 if fmt_name == "mxfp8" else formats.quantize_nvfp4
    a, b = quantize(torch.randn(m, k)), quantize(torch.randn(n, k))
    ts = (a[2], b[2]) if fmt_name == "nvfp4" else (None, None)
    bias = torch.randn(n) if with_bias else None
    out = torch.empty(m, n, dtype=getattr(torch, out_dtype))
    args, constexprs, options = triton_sm100.kernel_arguments(
        fmt_name, a[0], a[1], b[0], b[1], *ts, bias, out, divmod(capability, 10))
    compiled = aot_compile(triton_sm100._kernel(), args, constexprs, options, capability)
    ptx = compiled.asm["ptx"]
    results.append({
        "mma": sorted(set(re.findall(r"(?:tcgen05\.mma|mma\.sync)[\w:.]*", ptx))),
        "tcgen05_cp": len(re.findall(r"tcgen05\.cp", ptx)),
        "shared": compiled.metadata.shared,
    })
print(json.dumps(results))
"""

# (format, out dtype, with a bias, capability, K): sm_100 with both outputs; 12.0 with every tile
# config tiles_for picks there (16-bit and float32 output of both formats); 12.1 shares them. K 512
# has no scale padding columns; K 160 has (5 or 10 scale columns): the kernel then masks them.
AOT_JOBS = [
    *[(fmt, "bfloat16", True, 100, 512) for fmt in ("mxfp8", "nvfp4")],
    *[(fmt, "float32", False, 100, 512) for fmt in ("mxfp8", "nvfp4")],
    *[(fmt, "bfloat16", True, 120, 512) for fmt in ("mxfp8", "nvfp4")],
    *[(fmt, "float32", False, 120, 512) for fmt in ("mxfp8", "nvfp4")],
    ("mxfp8", "bfloat16", True, 121, 512),
    *[(fmt, "bfloat16", False, capability, 160) for fmt in ("mxfp8", "nvfp4") for capability in (100, 120)],
]


@functools.cache
def compiled_jobs() -> dict[tuple, dict]:
    stdout = run_fresh(AOT_SCRIPT, json.dumps(AOT_JOBS))
    return dict(zip(AOT_JOBS, json.loads(stdout.strip().splitlines()[-1])))


def compile_for(fmt: str, out_dtype: str, with_bias: bool, capability: int = 100, k: int = 512) -> dict:
    return compiled_jobs()[(fmt, out_dtype, with_bias, capability, k)]


MMA_KIND = {"mxfp8": "kind::mxf8f6f4", "nvfp4": "kind::mxf4nvf4"}


@pytest.mark.parametrize(
    "out_dtype, with_bias, k", [("bfloat16", True, 512), ("float32", False, 512), ("bfloat16", False, 160)]
)
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_triton_kernel_compiles_to_tcgen05_block_scaled_mma(fmt, out_dtype, with_bias, k):
    """K = 160: the variant that zeroes the scale padding columns keeps the block-scaled MMA, but its
    scales reach tensor memory through registers instead of tcgen05.cp (not timed on hardware)."""
    compiled = compile_for(fmt, out_dtype, with_bias, k=k)
    assert compiled["mma"], "no MMA instruction in the PTX"
    for mma in compiled["mma"]:  # every MMA is the block-scaled one: nothing fell back to bf16
        assert mma.startswith("tcgen05.mma") and MMA_KIND[fmt] in mma and "block_scale" in mma, mma
    padded = (k // formats.FORMATS[fmt].block_size) % 4 != 0
    assert (compiled["tcgen05_cp"] > 0) == (not padded)  # scales copied from shared to tensor memory
    assert compiled["shared"] <= SM100_MAX_SHARED


# The block-scaled mma.sync of sm_120 / sm_121 (PTX ISA 8.7): one K32 (MXFP8) or K64 (NVFP4) step
# per instruction, E8M0 scales once per 32 elements, e4m3 scales once per 16 (scale_vec::4X).
SM120_MMA = {
    "mxfp8": "mma.sync.aligned.m16n8k32.row.col.kind::mxf8f6f4.block_scale.scale_vec::1X.f32.e4m3.e4m3.f32.ue8m0",
    "nvfp4": "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3",
}


@pytest.mark.parametrize("fmt, out_dtype, with_bias, capability, k", [job for job in AOT_JOBS if job[3] >= 120])
def test_triton_kernel_compiles_to_block_scaled_mma_sync_on_sm120(fmt, out_dtype, with_bias, capability, k):
    """The tiles tiles_for picks for 12.x (2 stages; NVFP4 with float32 output BLOCK_K 128) compile
    to nothing but the block-scaled mma.sync and fit in the 99 KB of shared memory per block."""
    compiled = compile_for(fmt, out_dtype, with_bias, capability, k)
    assert compiled["mma"] == [SM120_MMA[fmt]]
    assert compiled["tcgen05_cp"] == 0
    assert compiled["shared"] <= triton_sm100.SM120_MAX_SHARED


# ----------------------------------------------------------------------------------------------
# Triton: the kernels under the interpreter, against fp64
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def interpreter(monkeypatch):
    """Skips unless this process runs Triton interpreted (TRITON_INTERPRET=1 since before triton
    was imported, as set at the top of this file when no GPU is present) with tl.dot_scaled
    support (Triton >= 3.8). Patches the interpreter's decode of dot_scaled scales: Triton 3.8's and
    3.9's read every scale as E8M0, also the e4m3 scales of NVFP4; the patch decodes those as e4m3 and
    leaves E8M0 to Triton. The kernels are otherwise run as the GPU would get them."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1 (a CUDA device is present: see the -m gpu tests)")
    triton = pytest.importorskip("triton")
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 8):
        pytest.skip(f"Triton {triton.__version__}'s interpreter lacks tl.dot_scaled (3.8 has it)")
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp

    def e4m3_to_f32(data):
        return torch.from_numpy(data.view(np.uint8).copy()).view(torch.float8_e4m3fn).float().numpy()

    if hasattr(interp, "_dot_scaled_scale_to_f32"):  # Triton 3.9: one decode for every scale
        decode_e8m0 = interp._dot_scaled_scale_to_f32

        def decode(scale, compute_type):
            return e4m3_to_f32(scale.data) if scale.dtype == tl.float8e4nv else decode_e8m0(scale, compute_type)

        monkeypatch.setattr(interp, "_dot_scaled_scale_to_f32", decode)
    elif hasattr(interp, "_prepare_dot_scaled_operand"):  # Triton 3.8: decode inside the operand setup
        prepare = interp._prepare_dot_scaled_operand

        def prepare_e4m3(value_handle, scale_handle, format_enum, k_pack, is_rhs):
            if scale_handle is None or scale_handle.dtype != tl.float8e4nv:
                return prepare(value_handle, scale_handle, format_enum, k_pack, is_rhs)
            value = prepare(value_handle, None, format_enum, k_pack, is_rhs)  # unscaled
            scale = e4m3_to_f32(scale_handle.data)  # [rows, K / VEC], as Triton's own E8M0 path has it
            if is_rhs:  # value is [K, N]
                return value * np.swapaxes(np.repeat(scale, value.shape[-2] // scale.shape[-1], axis=-1), -1, -2)
            return value * np.repeat(scale, value.shape[-1] // scale.shape[-1], axis=-1)

        monkeypatch.setattr(interp, "_prepare_dot_scaled_operand", prepare_e4m3)
    else:
        pytest.skip("this Triton's interpreter has no dot_scaled scale decode to patch for e4m3 scales")


@pytest.mark.parametrize("capability", [(10, 0), (12, 0)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, n, k", [(128, 1000, 64), (200, 1000, 160), (256, 1000, 256)])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_triton_kernel_interpreted_matches_fp64(interpreter, fmt, m, n, k, out_dtype, capability):
    """With the tiles of sm_100 and of sm_120: M not a multiple of 128 (padded scale rows,
    zero-filled qdata), K not a multiple of BLOCK_K (padded scale columns), N = 1000 (a partial last
    tile), a bias on every other shape, and two persistent programs for 8 to 16 tiles."""
    tiles = triton_sm100.tiles_for(fmt, capability, out_dtype)
    if capability != (10, 0) and tiles.block_k == triton_sm100.tiles_for(fmt, (10, 0), out_dtype).block_k:
        pytest.skip("the same tiles as sm_100's but for the stage count, which the interpreter does not model")
    a, b = quantized(fmt, m, k, seed=m + k), quantized(fmt, n, k, seed=m + k + 1)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(k)) if m != 200 else None
    ts = (a[2], b[2]) if fmt == "nvfp4" else (None, None)
    out = triton_sm100.block_scaled_mm(
        fmt, a[0], a[1], b[0], b[1], *ts, bias, out_dtype, num_programs=2, capability=capability
    )
    expected = dequantized_f64(fmt, a) @ dequantized_f64(fmt, b).T
    if bias is not None:
        expected += bias.double()
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert relative_error(out, expected) <= TOLERANCE[out_dtype]


@pytest.mark.parametrize("capability", [(10, 0), (12, 0)])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_triton_kernel_interpreted_ignores_nan_scale_padding(interpreter, fmt, capability):
    """0xFF (NaN) in every padding byte of both scale tensors (K = 160: 5 MXFP8 or 10 NVFP4 scale
    columns, padded to 8 or 12; M = 77, N = 200: padded rows): the kernel zeroes the padding
    columns the MMA reads, so the result equals the one with zero padding."""
    from dq_kernels.bench.selftest import nan_padded

    m, n, k = 77, 200, 160
    a, b = quantized(fmt, m, k, seed=3), quantized(fmt, n, k, seed=4)
    ts = (a[2], b[2]) if fmt == "nvfp4" else (None, None)
    a_s, b_s = nan_padded(a[1], fmt, m, k), nan_padded(b[1], fmt, n, k)
    assert not torch.equal(a_s.view(torch.uint8), a[1].view(torch.uint8))
    clean = triton_sm100.block_scaled_mm(fmt, a[0], a[1], b[0], b[1], *ts, None, torch.float32, 2, capability)
    padded = triton_sm100.block_scaled_mm(fmt, a[0], a_s, b[0], b_s, *ts, None, torch.float32, 2, capability)
    assert torch.equal(padded, clean)


# ----------------------------------------------------------------------------------------------
# Triton: the kernel body on a Hopper GPU
# ----------------------------------------------------------------------------------------------

HOPPER_TILES = (12, 0)  # sm_120's tiles (2 stages): on sm_90 MXFP8 takes 99 KB (16-bit out) or 132 KB (fp32)


@pytest.mark.gpu
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, n, k", [(300, 1000, 160), (129, 1000, 4160), (1, 1000, 4160), (200, 1000, 512)])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_triton_kernel_body_on_hopper_against_fp64(fmt, m, n, k, out_dtype, with_bias):
    """The triton_sm100 kernel on an H100, where Triton lowers tl.dot_scaled by upcasting both
    operands to bf16 for wgmma: everything around the MMA runs on real hardware as on Blackwell, the
    TMA descriptors (the 5-D ones over the swizzled scales), the zero fill past M = 300, 129 or 1
    and N = 1000 (not multiples of 128), the masked scale padding columns (K = 160 and 4160; K = 512
    has none), the persistent loop (3 programs for 8 to 24 tiles), alpha, bias and both output
    dtypes. The backend refuses 9.0, so this calls its launcher with sm_120's tiles, which fit
    Hopper's shared memory. NVFP4 is tried and skipped where Triton cannot compile its dot_scaled
    for sm_90 (Triton 3.6: the TritonGPUAccelerateMatmul pass fails)."""
    device = torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.get_device_capability(device)[0] != 9:
        pytest.skip("needs a Hopper GPU (compute capability 9.x); on Blackwell see test_on_blackwell_against_fp64")
    triton = pytest.importorskip("triton")
    pytest.importorskip("triton.tools.tensor_descriptor", reason=f"Triton {triton.__version__} has no TensorDescriptor")
    a, b = quantized(fmt, m, k, seed=m + k), quantized(fmt, n, k, seed=m + k + 1)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(k)) if with_bias else None
    a_d, b_d = [t.to(device) for t in a], [t.to(device) for t in b]
    ts = (a_d[2], b_d[2]) if fmt == "nvfp4" else (None, None)
    bias_d = None if bias is None else bias.to(device)
    args = (fmt, a_d[0], a_d[1], b_d[0], b_d[1], *ts, bias_d, out_dtype)
    if fmt == "nvfp4":
        try:
            out = triton_sm100.block_scaled_mm(*args, num_programs=3, capability=HOPPER_TILES)
        except (RuntimeError, triton.compiler.errors.CompilationError) as e:
            if "PassManager::run failed" not in str(e) and not isinstance(e, triton.compiler.errors.CompilationError):
                raise
            pytest.skip(f"Triton {triton.__version__} cannot compile NVFP4 tl.dot_scaled for sm_90: {str(e)[-200:]}")
    else:
        out = triton_sm100.block_scaled_mm(*args, num_programs=3, capability=HOPPER_TILES)
    assert out.dtype == out_dtype and out.shape == (m, n) and out.device == device
    error = relative_error(out, fp64_product(fmt, a, b, bias))
    print(f"{fmt} {m}x{n}x{k} {out_dtype} bias={with_bias}: relative error {error:.3g} (Triton {triton.__version__})")
    assert error <= TOLERANCE[out_dtype]


# ----------------------------------------------------------------------------------------------
# On a Blackwell GPU: both backends against fp64
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n, k", [(1, 1000, 160), (129, 1000, 4160), (512, 3072, 3072)])
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
@pytest.mark.parametrize("name", SM100_BACKENDS)
def test_on_blackwell_against_fp64(name, fmt, m, n, k, out_dtype):
    device = torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.get_device_capability(device)[0] != 10:  # cutlass also runs MXFP8 on Hopper: test_sm90
        pytest.skip("needs a Blackwell GPU (compute capability 10.x)")
    backend = backends.get_backend(name)
    reason = backend.spec.device_reason(device) or backend.spec.shape_reason(f"{fmt}_mm", m, n, k)
    reason = reason or (None if backend.availability()[0] else backend.availability()[1])
    if reason:
        pytest.skip(reason)
    a, b = quantized(fmt, m, k, seed=1), quantized(fmt, n, k, seed=2)
    bias = torch.randn(n, dtype=torch.bfloat16)
    expected = dequantized_f64(fmt, a) @ dequantized_f64(fmt, b).T + bias.double()
    on_device = [t.to(device) for t in (*a, *b, bias)]
    mm = dq.mxfp8_mm if fmt == "mxfp8" else dq.nvfp4_mm
    out = mm(*on_device[:-1], bias=on_device[-1], out_dtype=out_dtype, backend=name)
    error = relative_error(out, expected)
    print(f"{name} {fmt} {m}x{n}x{k} {out_dtype}: relative error {error:.3g}")
    assert error <= blackwell_tolerance(out_dtype, k)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "m, n, k, config",
    [(300, 1000, 4160, "2sm"), (300, 1000, 160, "2sm"), (1, 1000, 160, "2sm"), (1, 1000, 4160, "2sm"),
     (300, 1000, 32, "2sm"), (77, 8, 32, "1sm"), (1, 8, 32, "2sm")],
)  # fmt: skip
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_cutlass_configs_on_blackwell_against_fp64(sm100_library, fmt, m, n, k, config, out_dtype):
    """Each CUTLASS tile config forced through the native call: the 2-SM kernel with a half-empty
    second 256-row tile (M = 300: its second CTA pair holds 44 rows, one CTA none), the 2-SM config
    at M = 1, and K = 32 (one K step, mostly zero-filled)."""
    device = torch.device("cuda", torch.cuda.current_device())
    runs, why = native.supports_device(device, native.SM100_FAMILY)
    if torch.cuda.get_device_capability(device)[0] != 10 or not runs:
        pytest.skip(f"needs a Blackwell GPU (compute capability 10.x) the library has sm100_gemm code for: {why}")
    a, b = quantized(fmt, m, k, seed=1), quantized(fmt, n, k, seed=2)
    bias = torch.randn(n)
    a_d, b_d = [t.to(device) for t in a], [t.to(device) for t in b]
    out = torch.empty(m, n, dtype=out_dtype, device=device)
    if fmt == "mxfp8":
        native.sm100_mxfp8_mm(a_d[0], a_d[1], b_d[0], b_d[1], bias.to(device), out, config=config)
    else:
        native.sm100_nvfp4_mm(*a_d, *b_d, bias.to(device), out, config=config)
    error = relative_error(out, fp64_product(fmt, a, b, bias))
    print(f"cutlass {config} {fmt} {m}x{n}x{k} {out_dtype}: relative error {error:.3g}")
    assert error <= blackwell_tolerance(out_dtype, k)
