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


# ---------------------------------------------------------------------------------------------- 3


def test_static_activation_scale_refused_unless_positive():
    # issue 21 #3: activation_scale 0 gave an all-zero output, a negative one relative error 1.0
    from dq_kernels.config import NVFP4Config
    from dq_kernels.tensor import NVFP4Weight

    w = torch.randn(32, 64)
    for amax in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="NVFP4Weight.from_float: activation_amax must be a positive finite"):
            NVFP4Weight.from_float(w, activation_amax=amax)
        with pytest.raises(ValueError, match="NVFP4Config: activation_amax must be a positive finite"):
            NVFP4Config(activation_amax=amax)
    for scale in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="activation_scale must be positive and finite"):
            formats.check_activation_scale(torch.tensor(scale))
    with pytest.raises(TypeError, match="activation_scale must be float32"):
        formats.check_activation_scale(torch.tensor(1.0, dtype=torch.float64))
    formats.check_activation_scale(NVFP4Weight.from_float(w, activation_amax=3.0).activation_scale)


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_check_scales_catches_row_major_scales_where_padding_exists(fmt):
    # issue 21 #3: row-major scales are accepted by the ops whenever their element count fits
    rows, k = 200, 96
    x = torch.randn(rows, k)
    s = formats.quantize_mxfp8(x)[1] if fmt == "mxfp8" else formats.quantize_nvfp4(x)[1]
    formats.check_scales(s, fmt, rows, k)
    block = formats.FORMATS[fmt].block_size
    row_major = formats.from_blocked(s, rows, k // block)
    padded = torch.zeros_like(s)
    padded.view(-1)[: row_major.numel()] = row_major.flatten()  # right element count, wrong order
    with pytest.raises(ValueError, match="padding entries of s .* not zero.*to_blocked"):
        formats.check_scales(padded, fmt, rows, k)
    with pytest.raises(ValueError, match=rf"must hold round_up\(200, 128\) \* round_up\({k // block}, 4\) = "):
        formats.check_scales(s[:128], fmt, rows, k)


def test_check_scales_refuses_negative_nvfp4_scales():
    rows, k = 128, 64
    s = formats.quantize_nvfp4(torch.randn(rows, k))[1]
    formats.check_scales(s, formats.NVFP4, rows, k)
    with pytest.raises(ValueError, match="1 NVFP4 block scales of s are negative"):
        negative = s.clone()
        negative.view(torch.uint8)[0, 0] |= 0x80
        formats.check_scales(negative, "nvfp4", rows, k)
