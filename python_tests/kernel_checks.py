"""Helpers shared by the GEMM kernel tests (test_sm90, test_sm100): what the native library was
built with, its SASS, Triton kernels compiled ahead of time, a faked compute capability, the
relative error against an fp64 oracle, and a CUDA graph's capture and replay."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dq_kernels
from dq_kernels import formats, native
from dq_kernels.backends import base


def family_built(family: str) -> bool:
    """Whether the native library loaded and holds the kernel ``family`` (native.SM90_FAMILY, ...)."""
    return native.status()[0] and bool(native.build_info()["families"].get(family))


def fake_capability(monkeypatch, capability: tuple[int, int]) -> None:
    """Make every CUDA device report ``capability`` to the backend specs (no CUDA call is made)."""
    from dq_kernels import backends

    monkeypatch.setattr(base, "capability", lambda device: capability)
    backends._forget_selections()


def sass_functions(library: Path, arch: str) -> dict[str, str]:
    """{mangled function name: SASS} of the ``arch`` code (e.g. "sm_90a") in ``library``, from the
    cuobjdump that ships in the Triton wheel (skips when there is none)."""
    triton = pytest.importorskip("triton")
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not cuobjdump.is_file():
        pytest.skip(f"no cuobjdump at {cuobjdump}")
    command = [str(cuobjdump), "--dump-sass", "--gpu-architecture", arch, str(library)]
    dump = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    parts = re.split(r"^\s*Function : (\S+)$", dump, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def dequantized_f64(fmt: str, operand) -> torch.Tensor:
    """A canonical operand ((q, s) for MXFP8, (q, s, tensor scale) for NVFP4) decoded to float64 on the CPU."""
    decode = formats.dequantize_mxfp8 if fmt == "mxfp8" else formats.dequantize_nvfp4
    return decode(*[t.cpu() for t in operand], torch.float32).double()


def fp64_product(fmt: str, a, b, bias=None) -> torch.Tensor:
    """The fp64 oracle a @ b.T (+ bias) of two canonical operands of ``fmt``; ``a`` may also be a
    high-precision activation tensor (W4A16)."""
    a64 = a.cpu().double() if isinstance(a, torch.Tensor) else dequantized_f64(fmt, a)
    out = a64 @ dequantized_f64(fmt, b).T
    return out if bias is None else out + bias.cpu().double()


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error of ``out`` against the fp64 ``expected``."""
    return ((out.double().cpu() - expected).norm() / expected.norm()).item()


# Defines aot_compile() for the scripts run_fresh runs.
AOT_PRELUDE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import mangle_type


def aot_compile(kernel, args, constexprs, options, capability):
    # the Triton kernel compiled for compute capability ``capability`` (e.g. 90) from a launch's arguments
    signature = {name: mangle_type(arg) for name, arg in zip(kernel.arg_names, args)}
    signature.update({name: "constexpr" for name in constexprs})
    constants = {name: arg for name, arg in zip(kernel.arg_names, args) if arg is None}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs={**constants, **constexprs})
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
"""


def run_fresh(script: str, *argv: str) -> str:
    """The stdout of ``script`` (which may call aot_compile) run in a fresh interpreter without
    TRITON_INTERPRET, since this test process may be interpreting, with this checkout's dq_kernels
    importable; fails the test if the script fails."""
    pytest.importorskip("triton")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(dq_kernels.__file__).parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", AOT_PRELUDE + script, *argv], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def replayed(fn):
    """fn()'s output, captured into a CUDA graph on a side stream and replayed once."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return out
