"""Issue 21 ("A newcomer's first hour"): the fixes that have no other natural home, one test (or a
few) per numbered finding; each failed before its fix."""

import os
import pathlib
import subprocess
import sys

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


# ---------------------------------------------------------------------------------------------- 5


@pytest.mark.parametrize("out_dtype", [None, "bfloat16", torch.int8])
def test_mm_out_dtype_checked_before_the_op_schema(out_dtype):
    # issue 21 #5: None or "bfloat16" met the op schema ("expected ScalarType ...")
    import dq_kernels as dq

    x = torch.randn(32, 64)
    q, s = dq.quantize_mxfp8(x)
    with pytest.raises(TypeError, match="dq_kernels.mxfp8_mm: out_dtype must be torch.bfloat16, torch.float16"):
        dq.mxfp8_mm(q, s, q, s, out_dtype=out_dtype)
    q4, s4, ts = dq.quantize_nvfp4(x)
    with pytest.raises(TypeError, match="dq_kernels.nvfp4_mm: out_dtype must be"):
        dq.nvfp4_mm(q4, s4, ts, q4, s4, ts, out_dtype=out_dtype)
    with pytest.raises(TypeError, match="dq_kernels.dequantize_mxfp8: dtype must be"):
        dq.dequantize_mxfp8(q, s, out_dtype)
    with pytest.raises(TypeError, match="dq_kernels.dequantize_nvfp4: dtype must be"):
        dq.dequantize_nvfp4(q4, s4, ts, out_dtype)
    if isinstance(out_dtype, str):
        with pytest.raises(TypeError, match="a torch.dtype, not a string"):
            dq.mxfp8_mm(q, s, q, s, out_dtype=out_dtype)


def test_from_blocked_refuses_non_int_and_negative_dimensions():
    # issue 21 #5: 70.0 failed inside reshape; rows = -5 returned an empty tensor
    s = formats.to_blocked(torch.randint(0, 255, (70, 3), dtype=torch.uint8))
    with pytest.raises(TypeError, match="from_blocked: rows must be an int, got float 70.0"):
        formats.from_blocked(s, 70.0, 3)
    with pytest.raises(TypeError, match="from_blocked: cols must be an int, got bool True"):
        formats.from_blocked(s, 70, True)
    with pytest.raises(ValueError, match="from_blocked: rows must be >= 0, got -5"):
        formats.from_blocked(s, -5, 3)
    assert formats.from_blocked(s, 70, 3).shape == (70, 3)


def test_configs_refuse_wrong_types_and_an_empty_backend():
    # issue 21 #5: activation_amax="5" failed comparing float and str, weight_only="no" was truthy,
    # backend="" gave a message that did not name the argument
    from dq_kernels.config import MXFP8Config, NVFP4Config, set_backend

    with pytest.raises(TypeError, match="NVFP4Config: activation_amax must be a positive finite number, got str '5'"):
        NVFP4Config(activation_amax="5")
    with pytest.raises(TypeError, match="NVFP4Config: weight_only must be True or False, got 'no'"):
        NVFP4Config(weight_only="no")
    for config in (MXFP8Config, NVFP4Config):
        for backend in ("", None):
            with pytest.raises(ValueError, match=f"{config.__name__}: backend must be 'auto' or a registered"):
                config(backend=backend)
        with pytest.raises(ValueError, match=f"{config.__name__}: backend: unknown dq_kernels backend 'bogus'"):
            config(backend="bogus")
    with pytest.raises(ValueError, match="set_backend: backend must be"):
        set_backend(torch.nn.Linear(32, 32), "")
    assert NVFP4Config(activation_amax=5).activation_amax == 5.0


# ---------------------------------------------------------------------------------------------- 11


def test_skipped_layer_warning_describes_the_layer_not_its_repr(caplog):
    # issue 21 #11: the warning printed the module's repr, "Linear(in_features=16, ...)"
    from torchao.quantization import quantize_

    from dq_kernels.config import MXFP8Config

    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Linear(64, 64))
    with caplog.at_level("WARNING", logger="dq_kernels"):
        quantize_(model, MXFP8Config())
    (message,) = [r.getMessage() for r in caplog.records if r.name == "dq_kernels"]
    assert message.startswith(
        "dq_kernels MXFP8Config: leaving a Linear layer 16 -> 64 unquantized: in_features = 16 is not a multiple of 32"
    )
    assert "in_features=16" not in message and "dq_kernels.diffusers.load_config" in message


# ---------------------------------------------------------------------------------------------- 7

IMPORT_AND_BENCH = """
import dq_kernels, dq_kernels.config
from dq_kernels import cli
cli.main(["bench", "model", "flux", "--tiny", "--steps", "3", "--formats", "mxfp8", "--backends", "auto"])
"""


def test_no_third_party_noise_from_our_imports_and_bench_model():
    # issue 21 #7: torchao's register_constant deprecations (torch 2.14), diffusers' "Unable to import
    # `torchao` Tensor objects" and "modules ... kept in float32: []" on every command
    pytest.importorskip("diffusers")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", IMPORT_AND_BENCH], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "mxfp8" in done.stdout
    for noise in ("register_constant", "Unable to import `torchao`", "should be kept in float32"):
        assert noise not in done.stderr
