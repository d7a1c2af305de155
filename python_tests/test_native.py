"""Tests of dq_kernels.native: lazy loading, status and build info, the compiled archs, the C
argument checks, and (on a GPU) the dequantize kernels against dq_kernels.formats, bit for bit."""

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from dq_kernels import formats, native

@pytest.fixture(autouse=True)
def fresh_native():
    """Every test loads the library anew, so environment changes take effect and do not leak."""
    native._reset()
    yield
    native._reset()


def loaded_library() -> ctypes.CDLL:
    ok, why = native.status()
    if not ok:
        pytest.skip(f"the native library is unavailable: {why}")
    return native._library().lib


# ----------------------------------------------------------------------------------------------
# CPU tests
# ----------------------------------------------------------------------------------------------


def test_status_is_a_bool_and_a_reason():
    ok, why = native.status()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    if ok:
        assert why.startswith(f"loaded {native.LIBRARY_PATH}")
    else:
        assert native.build_info() is None


@pytest.mark.skipif(os.environ.get("DQ_KERNELS_EXPECT_NATIVE") != "1", reason="DQ_KERNELS_EXPECT_NATIVE is not 1")
def test_library_is_built_when_expected():
    # CI sets DQ_KERNELS_EXPECT_NATIVE=1 when nvcc is present: a silently skipped build fails here
    ok, why = native.status()
    assert ok, why
    assert {"90a", "100f"} <= set(native.build_info()["archs"])  # the default DQ_KERNELS_CUDA_ARCHS


def test_disable_env_var(monkeypatch):
    monkeypatch.setenv("DQ_KERNELS_DISABLE_NATIVE", "1")
    native._reset()
    ok, why = native.status()
    assert not ok
    assert "DQ_KERNELS_DISABLE_NATIVE" in why
    assert native.build_info() is None
    assert native.supports_device(torch.device("cuda", 0)) == (False, why)


def test_import_loads_nothing():
    code = (
        "import torch, dq_kernels, dq_kernels.native as n\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'libdq_kernels_native' not in maps, 'the library was loaded at import'\n"
        "assert n._library.cache_info().currsize == 0\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_makes_no_cuda_call_even_with_a_gpu():
    # CPU CI cannot see CUDA being initialized; pretend a GPU is there and fail on the first call
    code = (
        "import torch\n"
        "def touched(*args, **kwargs):\n"
        "    raise SystemExit('CUDA was touched at import')\n"
        "torch.cuda.is_available = lambda: True\n"
        "torch.cuda._lazy_init = touched\n"
        "torch.cuda.get_device_capability = touched\n"
        "torch.cuda.get_device_properties = touched\n"
        "import dq_kernels, dq_kernels.native, dq_kernels.backends, dq_kernels.ops\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_supports_device_needs_cuda():
    ok, why = native.supports_device(torch.device("cpu"))
    assert not ok and "not a CUDA device" in why


# ----------------------------------------------------------------------------------------------
# The driver check: the library links the CUDA runtime statically, so an older driver fails every call
# ----------------------------------------------------------------------------------------------


def test_driver_version_asks_the_driver_library_only():
    """None on a machine without a CUDA driver (CI), else the version the driver supports."""
    version = native._driver_version()
    assert version is None or version >= 10000


def test_an_old_driver_makes_the_library_unavailable_with_the_reason(monkeypatch):
    loaded_library()  # built and loadable here
    built_with = native.build_info()["cuda_version"]
    older = (built_with // 1000 - 1) * 1000 + 80  # e.g. 12080 (CUDA 12.8) for a CUDA 13 build
    native._reset()
    monkeypatch.setattr(native, "_driver_version", lambda: older)
    ok, why = native.status()
    assert not ok
    assert f"driver supports CUDA {older // 1000}.8 only" in why and "update the NVIDIA driver" in why
    assert native.build_info()["cuda_version"] == built_with  # still reported
    # the reference backend asks supports_device before decoding natively: it falls back to torch
    assert native.supports_device(torch.device("cuda", 0)) == (False, why)
    from dq_kernels.backends import get_backend

    ok, cutlass_why = get_backend("cutlass").availability()
    assert not ok and why in cutlass_why


@pytest.mark.parametrize("driver", ["same major", None])
def test_a_new_enough_driver_or_none_loads(monkeypatch, driver):
    """No driver (a build machine, CI) loads too: the host-only entry points work without one."""
    loaded_library()
    built_with = native.build_info()["cuda_version"]
    native._reset()
    monkeypatch.setattr(native, "_driver_version", lambda: None if driver is None else built_with // 1000 * 1000)
    ok, why = native.status()
    assert ok, why
    assert ("driver for CUDA" in why) == (driver is not None)


@pytest.mark.parametrize(
    "arch, capability, runs",
    [
        ("90a", (9, 0), True),
        ("90a", (10, 0), False),
        ("90a", (8, 0), False),
        ("100a", (10, 0), True),
        ("100a", (10, 3), False),
        ("100a", (12, 0), False),
        ("100f", (10, 0), True),
        ("100f", (10, 3), True),
        ("100f", (12, 0), False),
        ("103a", (10, 3), True),
        ("103a", (10, 0), False),
        ("80", (8, 6), True),
        ("80", (9, 0), False),
        ("89", (8, 6), False),
    ],
)
def test_arch_runs_on(arch, capability, runs):
    assert native._arch_runs_on(arch, capability) is runs


def test_build_info():
    loaded_library()
    info = native.build_info()
    assert set(info) == {"version", "cuda_version", "archs", "families", "skipped"}
    assert info["archs"] and all(isinstance(a, str) for a in info["archs"])
    assert info["cuda_version"] >= 12000
    assert set(info["families"]["dequantize"]) == set(info["archs"])  # dequantize builds for every arch
    for skipped in info["skipped"]:
        assert set(skipped) == {"family", "arch", "why"}
    assert ";".join(info["archs"]) in native.status()[1]


@pytest.mark.parametrize("arch", ["90a", "100f"])
def test_library_has_device_code_for(arch):
    loaded_library()
    triton = pytest.importorskip("triton")
    if arch not in native.build_info()["archs"]:
        pytest.skip(f"built without {arch} (DQ_KERNELS_CUDA_ARCHS)")
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not cuobjdump.is_file():
        pytest.skip(f"no cuobjdump at {cuobjdump}")
    listing = subprocess.run(
        [str(cuobjdump), "--list-elf", str(native.LIBRARY_PATH)], check=True, capture_output=True, text=True
    ).stdout
    # Older cuobjdump (Triton 3.6's) names an sm_90a cubin ".sm_90.cubin".
    assert f".sm_{arch}.cubin" in listing or f".sm_{arch.rstrip('af')}.cubin" in listing, listing


def test_c_argument_checks():
    """Bad arguments come back as negative codes before anything touches CUDA (fake pointers)."""
    lib = loaded_library()
    p = 256  # a fake, well-aligned "device pointer": never dereferenced on these paths
    mx, nv = lib.dq_dequantize_mxfp8, lib.dq_dequantize_nvfp4
    assert mx(None, p, p, 1, 32, 1, None) == -1
    assert nv(None, p, p, p, 1, 16, 1, None) == -1  # (a NULL tensor_scale means 1)
    assert mx(p, p, p, 0, 32, 1, None) == -2
    assert mx(p, p, p, 1, 48, 1, None) == -2  # K % 32 != 0
    assert nv(p, p, p, p, 1, 24, 1, None) == -2  # K % 16 != 0
    assert mx(p, p, p, 2**40, 2**40, 1, None) == -2  # M * K overflows
    assert mx(p, p, p, 1, 32, 3, None) == -3
    assert mx(p + 8, p, p, 1, 32, 1, None) == -4  # q of MXFP8 needs 16 bytes
    assert nv(p + 4, p, p, p, 1, 16, 1, None) == -4
    assert mx(p, p, p + 8, 1, 32, 1, None) == -4
    for code in (-1, -2, -3, -4):
        assert lib.dq_error_string(code).startswith(b"dq_kernels: ")
    assert lib.dq_error_string(1) == b"invalid argument"  # cudaErrorInvalidValue


def test_wrappers_reject_cpu_tensors():
    loaded_library()
    q = torch.zeros(1, 32, dtype=torch.uint8)
    s = torch.zeros(128, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="CUDA device"):
        native.dequantize_mxfp8(q, s, torch.empty(1, 32))


# ----------------------------------------------------------------------------------------------
# GPU tests: native kernels vs the pure-torch reference (computed on the CPU), bit for bit
# ----------------------------------------------------------------------------------------------

INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
OUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def cuda_device():
    device = torch.device("cuda", torch.cuda.current_device())
    ok, why = native.status()
    if not ok:
        pytest.skip(f"the native library is unavailable: {why}")
    ok, why = native.supports_device(device)
    if not ok:
        pytest.skip(why)
    return device


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same bit patterns everywhere, except that any NaN matches any NaN."""
    actual = actual.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    ints = INT_VIEW[expected.dtype]
    ok = (actual.view(ints) == expected.view(ints)) | (actual.isnan() & expected.isnan())
    if not ok.all():
        first = tuple(ok.logical_not().nonzero()[0].tolist())
        raise AssertionError(
            f"{int((~ok).sum())} of {ok.numel()} elements differ; first at {first}: native "
            f"{actual[first].item()!r} (bits {actual.view(ints)[first].item():#x}) vs reference "
            f"{expected[first].item()!r} (bits {expected.view(ints)[first].item():#x})"
        )


def random_bytes(shape, generator) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("k", [32, 160, 4160])
@pytest.mark.parametrize("m", [1, 77, 129, 300])
def test_dequantize_mxfp8_matches_reference(cuda_device, m, k, dtype):
    g = torch.Generator().manual_seed(m * 100_003 + k)
    q = random_bytes((m, k), g).view(torch.float8_e4m3fn)  # every byte, NaN (0x7F, 0xFF) included
    s = random_bytes(formats.MXFP8.scale_shape(m, k), g)  # every E8M0 byte, 0 and 255 included
    out = torch.empty(m, k, dtype=dtype, device=cuda_device)
    native.dequantize_mxfp8(q.to(cuda_device), s.to(cuda_device), out)
    assert_bitwise_equal(out, formats.dequantize_mxfp8(q, s, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("k", [32, 160, 4160])
@pytest.mark.parametrize("m", [1, 77, 129, 300])
def test_dequantize_nvfp4_matches_reference(cuda_device, m, k, dtype):
    g = torch.Generator().manual_seed(m * 100_003 + k + 7)
    q = random_bytes((m, k // 2), g)
    s = random_bytes(formats.NVFP4.scale_shape(m, k), g).view(torch.float8_e4m3fn)  # every e4m3 byte
    ts = (torch.rand((), generator=g) + 0.5) * 2.0 ** int(torch.randint(-20, 21, (), generator=g))
    out = torch.empty(m, k, dtype=dtype, device=cuda_device)
    native.dequantize_nvfp4(q.to(cuda_device), s.to(cuda_device), ts.to(cuda_device), out)
    assert_bitwise_equal(out, formats.dequantize_nvfp4(q, s, ts, dtype))


@pytest.mark.gpu
def test_dequantize_nvfp4_without_tensor_scale(cuda_device):
    """tensor_scale None decodes e2m1 x e4m3 alone (a tensor scale of 1), as the sm90 GEMM needs it."""
    g = torch.Generator().manual_seed(11)
    q = random_bytes((77, 80), g)
    s = random_bytes(formats.NVFP4.scale_shape(77, 160), g).view(torch.float8_e4m3fn)
    out = torch.empty(77, 160, dtype=torch.float16, device=cuda_device)
    native.dequantize_nvfp4(q.to(cuda_device), s.to(cuda_device), None, out)
    assert_bitwise_equal(out, formats.dequantize_nvfp4(q, s, torch.tensor(1.0), torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_dequantize_mxfp8_every_byte_pair(cuda_device, dtype):
    """Row r has scale byte r in every block and the q bytes 0..255: all 65536 (q, scale) pairs."""
    q = torch.arange(256, dtype=torch.uint8).repeat(256, 1).view(torch.float8_e4m3fn)  # [256, 256]
    scales = torch.arange(256, dtype=torch.uint8).unsqueeze(1).expand(256, 256 // 32)
    s = formats.to_blocked(scales.contiguous())
    out = torch.empty(256, 256, dtype=dtype, device=cuda_device)
    native.dequantize_mxfp8(q.to(cuda_device), s.to(cuda_device), out)
    assert_bitwise_equal(out, formats.dequantize_mxfp8(q, s, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_dequantize_nvfp4_every_code_and_scale(cuda_device, dtype):
    """Row r has e4m3 scale byte r and the 16 e2m1 codes in order: every (code, scale) pair."""
    codes = torch.arange(16, dtype=torch.uint8)
    q = (codes[0::2] | (codes[1::2] << 4)).repeat(256, 1)  # [256, 8]: K = 16
    s = formats.to_blocked(torch.arange(256, dtype=torch.uint8).unsqueeze(1)).view(torch.float8_e4m3fn)
    ts = torch.tensor(0.3, dtype=torch.float32)  # not a power of two: the second product rounds
    out = torch.empty(256, 16, dtype=dtype, device=cuda_device)
    native.dequantize_nvfp4(q.to(cuda_device), s.to(cuda_device), ts.to(cuda_device), out)
    assert_bitwise_equal(out, formats.dequantize_nvfp4(q, s, ts, dtype))


@pytest.mark.gpu
def test_dequantize_in_cuda_graph_on_a_side_stream(cuda_device):
    g = torch.Generator().manual_seed(0)
    q = random_bytes((300, 4160), g).view(torch.float8_e4m3fn)
    s = random_bytes(formats.MXFP8.scale_shape(300, 4160), g)
    q_dev, s_dev = q.to(cuda_device), s.to(cuda_device)
    out = torch.zeros(300, 4160, dtype=torch.bfloat16, device=cuda_device)
    stream = torch.cuda.Stream(cuda_device)
    stream.wait_stream(torch.cuda.current_stream(cuda_device))
    with torch.cuda.stream(stream):
        native.dequantize_mxfp8(q_dev, s_dev, out)  # warm-up outside capture (loads the kernels)
    torch.cuda.current_stream(cuda_device).wait_stream(stream)
    out.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        native.dequantize_mxfp8(q_dev, s_dev, out)
    assert not out.view(torch.int16).any()  # captured, not run
    graph.replay()
    torch.cuda.synchronize(cuda_device)
    assert_bitwise_equal(out, formats.dequantize_mxfp8(q, s, torch.bfloat16))


@pytest.mark.gpu
def test_wrapper_checks_on_cuda(cuda_device):
    q = torch.zeros(2, 64, dtype=torch.uint8, device=cuda_device).view(torch.float8_e4m3fn)
    s = torch.zeros(formats.MXFP8.scale_shape(2, 64), dtype=torch.uint8, device=cuda_device)
    with pytest.raises(ValueError, match="shape"):
        native.dequantize_mxfp8(q, s, torch.empty(2, 32, dtype=torch.bfloat16, device=cuda_device))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        native.dequantize_mxfp8(q, s, torch.empty(2, 64, dtype=torch.float64, device=cuda_device))
    misaligned = torch.empty(2 * 64 + 1, dtype=torch.bfloat16, device=cuda_device)[1:].view(2, 64)
    with pytest.raises(ValueError, match="aligned"):
        native.dequantize_mxfp8(q, s, misaligned)
    with pytest.raises(ValueError, match="scales"):
        native.dequantize_mxfp8(q, s[:64], torch.empty(2, 64, dtype=torch.bfloat16, device=cuda_device))


@pytest.mark.gpu
def test_stream_workspace_is_kept_per_thread_on_the_default_stream_and_fresh_elsewhere(cuda_device):
    """The native GEMMs' workspace: one buffer per thread for the default stream, grown when too
    small; a fresh allocation above KEPT_WORKSPACE_MAX_BYTES, on another stream (torch.compile's
    reduce-overhead warm-up runs on one, allocating from its graph pool) and inside CUDA-graph
    capture (the graph's pool), never the kept one."""
    stream = native.current_raw_stream(cuda_device.index)
    first = native.stream_workspace(1000, cuda_device, stream)
    assert first.numel() >= 1000 and native.stream_workspace(500, cuda_device, stream).data_ptr() == first.data_ptr()
    grown = native.stream_workspace(5000, cuda_device, stream)
    assert grown.numel() >= 5000 and native.stream_workspace(1000, cuda_device, stream).data_ptr() == grown.data_ptr()
    assert native.stream_workspace(0, cuda_device, stream) is None
    large = native.KEPT_WORKSPACE_MAX_BYTES + 1  # above the cap: fresh each time, the kept buffer left as it is
    big = native.stream_workspace(large, cuda_device, stream)
    assert big.numel() >= large and big.data_ptr() != grown.data_ptr()
    assert native.stream_workspace(1000, cuda_device, stream).data_ptr() == grown.data_ptr()
    del big
    side = torch.cuda.Stream(cuda_device)
    with torch.cuda.stream(side):
        on_side = native.stream_workspace(1000, cuda_device, side.cuda_stream)
        assert on_side.data_ptr() != grown.data_ptr()
        assert native.stream_workspace(1000, cuda_device, side.cuda_stream).data_ptr() != on_side.data_ptr()
    other = []
    thread = threading.Thread(target=lambda: other.append(native.stream_workspace(1000, cuda_device, stream).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != grown.data_ptr()
    graph, captured = torch.cuda.CUDAGraph(), []
    with torch.cuda.graph(graph):
        captured.append(native.stream_workspace(1000, cuda_device, native.current_raw_stream(cuda_device.index)))
    assert captured[0].data_ptr() != grown.data_ptr()
