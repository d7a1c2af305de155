"""Shared test setup: the ``gpu`` marker skips with a reason when no CUDA device is present, and
without a GPU the Triton kernels run under the interpreter."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # before anything imports triton (torchao does): Triton kernels can only run interpreted here
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _no_backend_from_the_environment(monkeypatch):
    """A developer's DQ_KERNELS_BACKEND must not change what the tests select, and no test sees
    the selections of another (tests swap registries and native libraries)."""
    from dq_kernels import backends

    monkeypatch.delenv("DQ_KERNELS_BACKEND", raising=False)
    backends._forget_selections()
    yield
    backends._forget_selections()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
