"""Build script: the Python package plus, when nvcc is found, the native library.

Package metadata lives in pyproject.toml. This file only drives CMake (CMakeLists.txt) from
``build_ext`` and puts ``libdq_kernels_native.so`` inside the ``dq_kernels`` package, for
``pip install .``, ``pip install -e .`` and wheels alike. The library is not a Python extension
(it is torch-free and Python-independent, loaded with ctypes by ``dq_kernels/native.py``), so a wheel
that holds it is tagged ``py3-none-<platform>``.

Environment variables:

* ``DQ_KERNELS_BUILD_CUDA``: ``0`` skips the native library, ``1`` requires it (an error without
  nvcc); unset, it is built when nvcc is found.
* ``DQ_KERNELS_CUDA_ARCHS``: GPU archs for device code, default ``90a;100f`` (``100f``: one cubin for
  the sm_100 family, compute capability 10.0 and 10.3).
* ``CUDACXX`` (the nvcc path) or ``CUDA_HOME`` (the toolkit folder) locate nvcc; otherwise ``PATH``,
  then ``/usr/local/cuda/bin/nvcc``.
* ``MAX_JOBS``: parallel compile jobs (default: the CPU count).

CUTLASS headers come from the ``nvidia-cutlass`` build requirement (``cutlass_library/source``);
CMake stops with a clear message only if a kernel family that needs them is compiled without them.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_EXT = "dq_kernels.libdq_kernels_native"
NATIVE_FILE = os.path.join("dq_kernels", "libdq_kernels_native.so")
DEFAULT_ARCHS = "90a;100f"


def find_nvcc() -> tuple[str | None, str]:
    """(path of nvcc, "") or (None, why none was found)."""
    if os.environ.get("CUDACXX"):
        nvcc = os.environ["CUDACXX"]
        return (nvcc, "") if os.path.isfile(nvcc) else (None, f"CUDACXX={nvcc} does not exist")
    if os.environ.get("CUDA_HOME"):
        nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        return (nvcc, "") if os.path.isfile(nvcc) else (None, f"CUDA_HOME={os.environ['CUDA_HOME']} has no bin/nvcc")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if os.path.isfile(nvcc):
        return nvcc, ""
    return None, "nvcc not found (set CUDACXX or CUDA_HOME, or put nvcc on PATH)"


def native_build_plan() -> tuple[str | None, str]:
    """(nvcc to build the native library with, "") or (None, why it is not built)."""
    wanted = os.environ.get("DQ_KERNELS_BUILD_CUDA", "")
    if wanted not in ("", "0", "1"):
        raise SystemExit(f"dq_kernels: DQ_KERNELS_BUILD_CUDA must be 0, 1 or unset, got {wanted!r}")
    if wanted == "0":
        return None, "DQ_KERNELS_BUILD_CUDA=0"
    nvcc, why = find_nvcc()
    if nvcc is None and wanted == "1":
        raise SystemExit(f"dq_kernels: DQ_KERNELS_BUILD_CUDA=1 but {why}")
    return nvcc, why


def build_tool(program: str) -> str:
    """Path of cmake or ninja: the binary of its PyPI package (a build requirement), else from PATH."""
    try:
        files = importlib.metadata.distribution(program).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    binaries = [f for f in files if f.name == program and f.parent.name == "bin"]
    # Prefer a binary inside the package (cmake/data/bin/cmake) to a launcher in the scripts folder
    # (../../../bin/cmake); ninja has only the latter, and it is the binary itself.
    binaries.sort(key=lambda f: str(f).startswith(".."))
    if binaries:
        return str(Path(binaries[0].locate()).resolve())
    path = shutil.which(program)
    if path is None:
        raise SystemExit(f"dq_kernels: {program} not found: pip install {program}")
    return path


def cutlass_dir() -> str | None:
    """The cutlass_library/source folder of the nvidia-cutlass wheel, or None if not installed."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "source")


class CMakeExtension(Extension):
    """The native library, built by CMakeLists.txt (no sources for setuptools to compile)."""

    def __init__(self, name: str, nvcc: str):
        super().__init__(name, sources=[])
        self.nvcc = nvcc


class BuildNative(build_ext):
    """Configures and builds CMakeLists.txt, writing the library where build_ext expects it."""

    def get_ext_filename(self, fullname: str) -> str:
        if fullname == NATIVE_EXT:
            return NATIVE_FILE  # a plain .so, without the Python extension suffix
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        cmake, ninja = build_tool("cmake"), build_tool("ninja")
        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A fixed folder keeps rebuilds incremental (setuptools gives editable builds a new temporary
        # build_temp each time). Every path that differs between build environments (isolated or
        # not) is passed on each configure, so a cache left by another environment is overridden.
        build_dir = ROOT / "build" / "native"
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_CUDA_COMPILER={ext.nvcc}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DDQ_KERNELS_CUDA_ARCHS={os.environ.get('DQ_KERNELS_CUDA_ARCHS') or DEFAULT_ARCHS}",
            f"-DDQ_KERNELS_VERSION={self.distribution.get_version()}",
            f"-DCUTLASS_DIR={cutlass_dir() or ''}",
        ]  # fmt: skip
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        for command in (configure, [cmake, "--build", str(build_dir), "--parallel", jobs]):
            print("dq_kernels: running " + " ".join(command), flush=True)
            subprocess.run(command, check=True)


class BdistWheel(bdist_wheel):
    """Tags a wheel that holds the native library py3-none-<platform>: it needs no particular Python."""

    def get_tag(self) -> tuple[str, str, str]:
        python, abi, platform = super().get_tag()
        return (python, abi, platform) if self.root_is_pure else ("py3", "none", platform)


nvcc, why_not = native_build_plan()
if nvcc is None:
    print(f"dq_kernels: building without the native CUDA library: {why_not}", flush=True)

setup(
    ext_modules=[CMakeExtension(NATIVE_EXT, nvcc)] if nvcc else [],
    cmdclass={"build_ext": BuildNative, "bdist_wheel": BdistWheel},
)
