"""What a cast could reach at best under `dq-kernels bench quant`'s timing: Triton copy kernels that
read a bf16 [M, K] input and write 1 byte (MXFP8's qdata) or half a byte (NVFP4's) per element and
compute nothing, timed like the benchmark (L2 flushed, GPU spin first). Their bandwidth is reported
on the bytes the casts move (qdata plus the small scale tiles, which the copies do not write, so the
ceiling is if anything optimistic), next to a plain clone of the input. Needs a CUDA GPU.

    python benchmarks/cast_copy_ceiling.py
"""

import torch
import triton
import triton.language as tl

from dq_kernels.bench import quant, timing

SHAPES = [(4096, 3072), (4608, 3072), (16384, 3072), (4096, 12288)]
BLOCK_M, BLOCK_K = 64, 128


@triton.jit
def narrowing_copy(x_ptr, y_ptr, M, K, INPUTS_PER_BYTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[M, K / INPUTS_PER_BYTE] bytes <- the low bits of x[M, K] bf16 (two elements OR-ed per byte
    for INPUTS_PER_BYTE = 2): the loads and stores of a cast, without its arithmetic."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < M) & (cols[None, :] < K))
    b = x.to(tl.int16, bitcast=True).to(tl.uint8)
    if INPUTS_PER_BYTE == 2:
        low, high = tl.split(tl.reshape(b, (BLOCK_M, BLOCK_K // 2, 2)))
        b = low | high
    out_cols = tl.program_id(1) * (BLOCK_K // INPUTS_PER_BYTE) + tl.arange(0, BLOCK_K // INPUTS_PER_BYTE)
    tl.store(y_ptr + rows[:, None] * (K // INPUTS_PER_BYTE) + out_cols[None, :], b, mask=rows[:, None] < M)


def copy_us(x: torch.Tensor, inputs_per_byte: int) -> float:
    m, k = x.shape
    y = torch.empty(m * k // inputs_per_byte, dtype=torch.uint8, device=x.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(k, BLOCK_K))

    def run():
        narrowing_copy[grid](x, y, m, k, INPUTS_PER_BYTE=inputs_per_byte, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, num_warps=8)

    run()
    return timing.median_us(run)


def main() -> None:
    for m, k in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        x.clone()
        clone_us = timing.median_us(lambda: x.clone())
        mxfp8_us, nvfp4_us = copy_us(x, 1), copy_us(x, 2)
        print(f"{m}x{k}: clone {4 * m * k / clone_us / 1e6:.2f} TB/s; "
              f"1-byte copy {mxfp8_us:.1f} us = {quant.bytes_moved('mxfp8', m, k) / mxfp8_us / 1e6:.2f} TB/s on MXFP8's bytes; "
              f"half-byte copy {nvfp4_us:.1f} us = {quant.bytes_moved('nvfp4_static', m, k) / nvfp4_us / 1e6:.2f} TB/s "
              "on NVFP4 static's bytes", flush=True)


if __name__ == "__main__":
    main()
