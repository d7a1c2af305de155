"""MXFP8 operands for the exactness tests of the Hopper GEMMs: scales spread over many binades,
E8M0 bytes 0 and 254 included, chosen so that every dequantized value and every product stays
finite in float32 (the fp64 oracle then sees what the kernels must reproduce)."""

from __future__ import annotations

import torch
from kernel_checks import fp64_product

from dq_kernels import formats

E4M3_BELOW_2 = 1.875  # the largest e4m3 value below 2: times 2^127 it is still finite in float32


def extreme_pair(m: int, n: int, k: int, seed: int, spread: int = 24, lowest_byte: int = 0):
    """Canonical MXFP8 operands (a_q, a_s, b_q, b_s) for out[m, n] = a @ b.T.

    Block scales are drawn from bytes 127 +- spread / 2 (``spread`` binades). Where K has at least
    two blocks, block column 0 holds byte 254 in every other row of A and byte ``lowest_byte`` in
    every row of B, and block column 1 the mirror image (B's byte 254 against A's lowest byte), so
    products 2^(254 + 0 - 254) = 1 appear next to the ordinary ones; the qdata of byte-254 blocks
    stays below 2 in magnitude so that their dequantized values are finite. ``lowest_byte`` 3 keeps
    every dequantized value a bfloat16 value (the exactness domain of a bf16-decoding kernel)."""
    g = torch.Generator().manual_seed(seed)

    def operand(rows: int, column_of_254: int, column_of_lowest: int):
        x = torch.randn(rows, k, generator=g) * 64
        e = torch.randint(127 - spread // 2, 127 + spread // 2 + 1, (rows, k // 32), generator=g, dtype=torch.int32)
        if k // 32 >= 2:
            e[::2, column_of_254] = 254
            e[:, column_of_lowest] = lowest_byte
        big = (e == 254).repeat_interleave(32, dim=1)
        x = torch.where(big, x.clamp(-E4M3_BELOW_2, E4M3_BELOW_2), x.clamp(-448, 448))
        return x.to(torch.float8_e4m3fn), formats.to_blocked(e.to(torch.uint8))

    a_q, a_s = operand(m, 0, 1)
    b_q, b_s = operand(n, 1, 0)
    return a_q, a_s, b_q, b_s


def oracle(a_q, a_s, b_q, b_s, bias=None) -> torch.Tensor:
    """fp64 product of the dequantized operands (+ bias), on the CPU."""
    return fp64_product("mxfp8", (a_q, a_s), (b_q, b_s), bias)
