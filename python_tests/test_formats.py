"""Reference formats: torchao 0.18 bit parity, the swizzled layout, round trips, special values."""

import math

import pytest
import torch

import dq_kernels as dq
from dq_kernels import formats

torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale  # noqa: E402
from torchao.prototype.mx_formats.utils import to_blocked as torchao_to_blocked  # noqa: E402

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def awkward(m: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random rows spread over many binades, plus zero blocks, tiny, huge and above-max values."""
    g = torch.Generator().manual_seed(seed)
    finfo = torch.finfo(dtype)
    lo, hi = math.log10(finfo.tiny) + 2, math.log10(finfo.max) - 2
    x = torch.randn(m, k, generator=g) * torch.logspace(lo, hi, m).unsqueeze(1)
    x[0, :32] = 0.0  # all-zero blocks (MXFP8 and NVFP4)
    x[1 % m, : min(k, 64)] = finfo.tiny / 4  # subnormal in the input dtype
    x[2 % m, 5] = finfo.max  # the largest finite value
    x[3 % m, :16] = torch.tensor([449.0, -500.0, 6.1, 1e4] * 4)  # above e4m3 / e2m1 max within a block
    x[4 % m, 16:48] = -0.0
    return x.to(dtype)


def torchao_mxfp8(x: torch.Tensor, scaling: str):
    xf = x.reshape(-1, x.shape[-1])
    xf = xf.float() if xf.dtype == torch.float16 else xf  # torchao takes bf16/fp32; fp16 -> fp32 is exact
    e, q = torchao_mx.to_mx(xf.contiguous(), torch.float8_e4m3fn, 32, ScaleCalculationMode[scaling.upper()])
    return q, torchao_to_blocked(e.view(torch.uint8))


def torchao_nvfp4(x: torch.Tensor, tensor_scale=None):
    xf = x.reshape(-1, x.shape[-1])
    if tensor_scale is None:
        tensor_scale = per_tensor_amax_to_scale(torch.max(torch.abs(xf)))
    xf = xf.float() if xf.dtype == torch.float16 else xf
    s, q = nvfp4_quantize(xf.contiguous(), 16, tensor_scale)
    return q, torchao_to_blocked(s.view(torch.uint8)), tensor_scale


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8).flatten(), b.contiguous().view(torch.uint8).flatten())


# ---------------------------------------------------------------------------------------------- layout


def layout_formula(rows: int, cols: int) -> torch.Tensor:
    """Byte offset of scale (r, s), straight from the formula in the notes."""
    cols_pad = formats.round_up(cols, 4)
    r = torch.arange(rows).unsqueeze(1)
    s = torch.arange(cols).unsqueeze(0)
    return (r // 128) * (cols_pad // 4) * 512 + (s // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + s % 4


@pytest.mark.parametrize("rows,cols", [(1, 1), (77, 5), (128, 4), (129, 130), (300, 7), (1000, 96)])
def test_to_blocked_matches_byte_offset_formula(rows, cols):
    ids = torch.arange(rows * cols, dtype=torch.int32).view(rows, cols) + 1
    blocked = dq.to_blocked(ids)
    assert blocked.shape == formats.swizzled_scale_shape(rows, cols)
    flat = blocked.flatten()
    assert torch.equal(flat[layout_formula(rows, cols).flatten()], ids.flatten())
    # every byte not addressed by the formula is padding and written as zero
    assert int((flat != 0).sum()) == rows * cols


@pytest.mark.parametrize("rows,cols", [(1, 1), (129, 130), (300, 7)])
def test_from_blocked_inverts_to_blocked(rows, cols):
    s = torch.randint(0, 256, (rows, cols), dtype=torch.uint8)
    assert torch.equal(dq.from_blocked(dq.to_blocked(s), rows, cols), s)
    assert torch.equal(dq.from_blocked(dq.to_blocked(s).flatten(), rows, cols), s)


@pytest.mark.parametrize("rows,cols", [(77, 5), (256, 8), (129, 130)])
def test_to_blocked_matches_torchao(rows, cols):
    s = torch.randint(0, 256, (rows, cols), dtype=torch.uint8)
    assert torch.equal(dq.to_blocked(s).flatten(), torchao_to_blocked(s).flatten())


def test_to_blocked_keeps_float8_dtype():
    s = torch.rand(5, 3).to(torch.float8_e4m3fn)
    out = dq.to_blocked(s)
    assert out.dtype == torch.float8_e4m3fn and out.is_contiguous()
    assert same_bytes(dq.from_blocked(out, 5, 3), s)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", ["rceil", "floor"])
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 4160), (256, 96)])
def test_quantize_mxfp8_bit_identical_to_torchao(dtype, scaling, m, k):
    x = awkward(m, k, dtype, seed=m + k)
    q, s = dq.quantize_mxfp8(x, scaling)
    q_ref, s_ref = torchao_mxfp8(x, scaling)
    assert q.shape == (m, k) and q.dtype == torch.float8_e4m3fn
    assert s.shape == formats.swizzled_scale_shape(m, k // 32) and s.dtype == torch.uint8
    assert same_bytes(q, q_ref)
    assert same_bytes(s, s_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 32), (77, 160), (129, 4160), (256, 96)])
@pytest.mark.parametrize("given_scale", [False, True])
def test_quantize_nvfp4_bit_identical_to_torchao(dtype, m, k, given_scale):
    x = awkward(m, k, dtype, seed=m * k)
    if dtype == torch.float32:
        x = x.clamp(-1e30, 1e30)  # amax / 2688 must stay finite for a meaningful tensor scale
    ts = torch.tensor(0.37, dtype=torch.float32) if given_scale else None
    q, s, t = dq.quantize_nvfp4(x, ts)
    q_ref, s_ref, t_ref = torchao_nvfp4(x, ts)
    assert q.shape == (m, k // 2) and q.dtype == torch.uint8
    assert s.shape == formats.swizzled_scale_shape(m, k // 16) and s.dtype == torch.float8_e4m3fn
    assert t.shape == () and t.dtype == torch.float32 and t.item() == t_ref.item()
    assert same_bytes(q, q_ref)
    assert same_bytes(s, s_ref)


def test_leading_batch_dims_flatten_into_m():
    x = torch.randn(2, 3, 5, 64)
    q, s = dq.quantize_mxfp8(x)
    q2, s2 = dq.quantize_mxfp8(x.reshape(30, 64))
    assert q.shape == (30, 64) and same_bytes(q, q2) and torch.equal(s, s2)
    q, s, t = dq.quantize_nvfp4(x)
    q2, s2, t2 = dq.quantize_nvfp4(x.reshape(30, 64))
    assert q.shape == (30, 32) and torch.equal(q, q2) and same_bytes(s, s2) and torch.equal(t, t2)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_mxfp8_round_trip_error_bound(dtype):
    x = torch.randn(77, 160, dtype=dtype)
    q, s = dq.quantize_mxfp8(x)
    y = dq.dequantize_mxfp8(q, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: relative error per element at most 2^-4 (RCEIL never saturates)
    err = (y - x.float()).abs() / x.float().abs().clamp(min=1e-30)
    assert err[x.float().abs() > x.float().abs().amax() * 2**-6].max() <= 2**-4


def test_mxfp8_round_trip_is_exact_on_representable_values():
    codes = torch.randint(0, 256, (64, 128), dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x01  # drop e4m3 NaN
    values = codes.view(torch.float8_e4m3fn).float() * 2.0**-5
    q, s = dq.quantize_mxfp8(values, "rceil")  # FLOOR may saturate a block (amax 7.5 -> 480 > 448)
    assert torch.equal(dq.dequantize_mxfp8(q, s, torch.float32), values)


def test_nvfp4_round_trip_error_bound():
    x = torch.randn(129, 4160)
    q, s, t = dq.quantize_nvfp4(x)
    y = dq.dequantize_nvfp4(q, s, t, torch.float32)
    rel = (y - x).norm() / x.norm()
    assert rel < 0.12, rel  # e2m1 with e4m3 block scales: ~9% RMS on Gaussian data


def test_nvfp4_round_trip_is_exact_on_representable_values():
    grid = torch.tensor(formats.E2M1_VALUES)
    codes = torch.randint(0, 16, (32, 64))
    codes[:, ::16] = 7  # every block holds a 6 so its block scale is exactly 1
    values = grid[codes]
    q, s, t = dq.quantize_nvfp4(values, torch.tensor(1.0))
    assert torch.equal(dq.dequantize_nvfp4(q, s, t, torch.float32), values)


def test_nibble_order_first_element_low():
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1] = 6.0, 0.5  # codes 7 and 1
    q, _, _ = dq.quantize_nvfp4(x, torch.tensor(1.0))
    assert q[0, 0].item() == 0x17


# ---------------------------------------------------------------------------------------------- special values


def test_e8m0_decode_special_bytes():
    e = torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8)
    v = formats.e8m0_to_float32(e)
    assert v[0].item() == 2.0**-127  # not zero
    assert v[1].item() == 2.0**-126 and v[2].item() == 0.5 and v[3].item() == 1.0 and v[4].item() == 2.0
    assert v[5].item() == 2.0**127
    assert math.isnan(v[6].item())


def test_mxfp8_dequantize_scale_bytes_0_and_255():
    q = torch.full((1, 64), 1.0).to(torch.float8_e4m3fn)
    s2d = torch.tensor([[0, 255]], dtype=torch.uint8)
    y = dq.dequantize_mxfp8(q, dq.to_blocked(s2d), torch.float32)
    assert torch.all(y[0, :32] == 2.0**-127)
    assert torch.all(torch.isnan(y[0, 32:]))


@pytest.mark.parametrize("scaling", ["rceil", "floor"])
def test_mxfp8_nan_and_inf(scaling):
    x = torch.randn(2, 64)
    x[0, 3] = float("nan")
    x[1, 40] = float("inf")
    q, s = dq.quantize_mxfp8(x, scaling)
    q_ref, s_ref = torchao_mxfp8(x, scaling)
    assert same_bytes(q, q_ref) and same_bytes(s, s_ref)
    y = dq.dequantize_mxfp8(q, s, torch.float32)
    assert torch.isnan(y[0, :32]).all() and not torch.isnan(y[0, 32:]).any()  # NaN block: scale 255
    # inf saturates to 448 at the largest scale, which decodes back to inf in float32; the rest of
    # its block flushes to zero
    assert y[1, 40].item() == float("inf") and torch.all(y[1, 32:40] == 0)


def test_nvfp4_nan_poisons_block_and_inf_saturates_with_given_scale():
    x = torch.randn(2, 32)
    x[0, 3] = float("nan")
    x[1, 20] = float("inf")
    q, s, t = dq.quantize_nvfp4(x, torch.tensor(0.01))
    y = dq.dequantize_nvfp4(q, s, t, torch.float32)
    assert torch.isnan(y[0, :16]).all() and not torch.isnan(y[0, 16:]).any()
    assert y[1, 20].item() == pytest.approx(6.0 * 448.0 * 0.01)
    # element codes match torchao everywhere except inside the NaN block (unspecified there)
    q_ref, s_ref, _ = torchao_nvfp4(x, torch.tensor(0.01))
    assert same_bytes(s, s_ref)
    assert torch.equal(q[1], q_ref[1]) and torch.equal(q[0, 8:], q_ref[0, 8:])


def test_nvfp4_dynamic_scale_with_inf_gives_nan_everywhere():
    x = torch.randn(1, 32)
    x[0, 0] = float("inf")
    q, s, t = dq.quantize_nvfp4(x)
    assert torch.isinf(t)
    assert torch.isnan(dq.dequantize_nvfp4(q, s, t, torch.float32)).all()


def test_values_above_max_saturate():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 1000.0, -3.0
    q, s = dq.quantize_mxfp8(x, "floor")  # FLOOR: scale 2^(9-8) = 2, 1000 / 2 = 500 saturates to 448
    assert q.float()[0, 0].item() == 448.0
    assert dq.dequantize_mxfp8(q, s, torch.float32)[0, 0].item() == 896.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_dtypes_round_once(dtype):
    x = torch.randn(129, 160)
    q, s = dq.quantize_mxfp8(x)
    assert torch.equal(dq.dequantize_mxfp8(q, s, dtype), dq.dequantize_mxfp8(q, s, torch.float32).to(dtype))
    q, s, t = dq.quantize_nvfp4(x)
    assert torch.equal(dq.dequantize_nvfp4(q, s, t, dtype), dq.dequantize_nvfp4(q, s, t, torch.float32).to(dtype))


def test_rceil_exact_where_torchao_log2_rounds_to_an_integer():
    # amax = 448 * 2^20 * (1 + 2^-23): log2(amax / 448) = 20 + 1.7e-7 rounds to 20.0 in float32, so
    # torchao's eager RCEIL picks 2^20 and 448 * (1 + 2^-23) saturates; the exact rule picks 2^21.
    x = torch.zeros(1, 32)
    x[0, 0] = 448.0 * 2.0**20 * (1 + 2.0**-23)
    _, s = dq.quantize_mxfp8(x, "rceil")
    _, s_torchao = torchao_mxfp8(x, "rceil")
    assert s[0, 0].item() == 127 + 21
    assert s_torchao.flatten()[0].item() == 127 + 20


# ---------------------------------------------------------------------------------------------- MXFP8 row form


def row_form_operand(rows: list[list[int]], seed: int = 0):
    """MXFP8 (q, s) with the given per-row block bytes; q random e4m3 over its whole range."""
    g = torch.Generator().manual_seed(seed)
    e = torch.tensor(rows, dtype=torch.uint8)
    x = torch.randn(e.shape[0], e.shape[1] * 32, generator=g) * torch.logspace(-3, 2.6, 32).repeat(e.shape[1])
    q = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, formats.to_blocked(e)


def exact_float64(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q * 2^(s - 127) in float64 (exact; float32 would overflow at byte 254)."""
    m, k = q.shape
    e = formats.from_blocked(s, m, k // 32).double().repeat_interleave(32, dim=1)
    return q.double() * torch.exp2(e - 127)


def test_mxfp8_row_form_unflagged_rows_are_exact():
    rows = [
        [127, 120, 140, 118],  # span 22 binades: the widest an unflagged row holds
        [254, 250, 240, 232],  # the top of the E8M0 range
        [3, 5, 10, 3],  # the bottom of the considered range, R = 3
        [0, 1, 2, 0],  # no considered block: R = 0, bytes 0..2 decode exactly
        [0, 130, 2, 131],  # zero blocks (byte 0) beside large ones: never flagged, decode as 0
    ]
    q, s = row_form_operand(rows)
    values, row_exp = formats.mxfp8_row_form(q, s)
    assert values.dtype == torch.float16 and values.shape == q.shape and values.is_contiguous()
    assert row_exp.dtype == torch.int32 and row_exp.tolist() == [140 - 7, 254 - 7, 3, 0, 131 - 7]
    exact = exact_float64(q, s)
    got = values.double() * torch.exp2(row_exp.double() - 127).unsqueeze(1)
    assert torch.equal(got[:4], exact[:4])
    assert torch.equal(got[4, 32:64], exact[4, 32:64]) and torch.equal(got[4, 96:], exact[4, 96:])
    assert torch.all(got[4, :32] == 0) and torch.all(got[4, 64:96] == 0)  # s - R < -15: zeros


def test_mxfp8_row_form_flagged_rows_hold_bf16_bits():
    rows = [
        [127, 127 - 23, 127, 127],  # 23 binades apart: flagged
        [127, 255, 127, 127],  # a NaN block: flagged
        [127, 127 - 22, 0, 127],  # 22 binades and a zero block: not flagged
    ]
    q, s = row_form_operand(rows)
    values, row_exp = formats.mxfp8_row_form(q, s)
    assert row_exp.tolist() == [formats.MXFP8_ROW_FLAGGED, formats.MXFP8_ROW_FLAGGED, 120]
    assert formats.MXFP8_ROW_FLAGGED == -1
    bf16 = formats.dequantize_mxfp8(q, s, torch.bfloat16)
    assert torch.equal(values[:2].view(torch.int16), bf16[:2].view(torch.int16))
    assert bool(torch.isnan(values[1, 32:64].view(torch.bfloat16)).all())


def test_mxfp8_row_form_of_quantized_activations():
    x = torch.randn(130, 160) * torch.logspace(-2, 2, 160)  # K = 160: scale columns padded to 8
    x[0, :32] = 0.0  # a zero block (byte 0) in a row of large values: not flagged
    q, s = formats.quantize_mxfp8(x)
    values, row_exp = formats.mxfp8_row_form(q, s)
    assert bool((row_exp >= 0).all())
    exact = exact_float64(q, s)
    assert torch.equal(values.double() * torch.exp2(row_exp.double() - 127).unsqueeze(1), exact)
