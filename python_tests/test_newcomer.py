"""Issue 21 ("A newcomer's first hour"): the fixes that have no other natural home, one test (or a
few) per numbered finding; each failed before its fix."""

import pytest
import torch

from dq_kernels import formats

# ---------------------------------------------------------------------------------------------- 6


def test_e2m1_decode_is_bit_exact_and_builds_no_tensor_from_python_values(monkeypatch):
    # issue 21 #6: the decode built its table with torch.tensor(list) on every call, a host-to-device
    # copy that CUDA graph capture refuses (NVFP4 without the native library)
    codes = formats._unpack_nibbles(torch.arange(256, dtype=torch.int32).to(torch.uint8))
    expected = torch.tensor(formats.E2M1_VALUES, dtype=torch.float32)[codes.long()]

    def refuse(*args, **kwargs):
        raise AssertionError("torch.tensor called during the e2m1 decode")

    monkeypatch.setattr(torch, "tensor", refuse)
    decoded = formats._decode_e2m1(codes)
    assert torch.equal(decoded.view(torch.int32), expected.view(torch.int32))  # -0.0 included
