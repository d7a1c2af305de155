"""Helpers shared by the GEMM kernel tests (test_sm90, test_sm100): what the native library was
built with, its SASS, a faked compute capability, and the relative error against an fp64 oracle."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from dq_kernels import native
from dq_kernels.backends import base


def family_built(family: str) -> bool:
    """Whether the native library loaded and holds the kernel ``family`` (native.SM90_FAMILY, ...)."""
    return native.status()[0] and bool(native.build_info()["families"].get(family))


def fake_capability(monkeypatch, capability: tuple[int, int]) -> None:
    """Make every CUDA device report ``capability`` to the backend specs (no CUDA call is made)."""
    monkeypatch.setattr(base, "capability", lambda device: capability)


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


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error of ``out`` against the fp64 ``expected``."""
    return ((out.double().cpu() - expected).norm() / expected.norm()).item()
