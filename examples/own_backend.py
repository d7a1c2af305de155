"""Bring your own kernel: a naive Triton MXFP8 GEMM registered as a dq_kernels backend, then run
inside a tiny FLUX transformer, benchmarked beside the built-in backends and cuBLAS, and checked by
the selftest against the fp64 oracle. The walkthrough: docs/own-backend.md.

    python examples/own_backend.py                          # a CUDA GPU
    TRITON_INTERPRET=1 python examples/own_backend.py       # a CPU, through Triton's interpreter
    python examples/own_backend.py --json rows.json         # also write the benchmark rows

Prints a short summary; exits 0 when every check passed, 1 otherwise.
"""

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

import dq_kernels as dq
from dq_kernels import cli

# The 128x4 swizzled scale layout as byte offsets, and the E8M0 decode, as our own Triton kernels use them.
from dq_kernels.backends.triton_common import decode_e8m0, swizzled_scale_offsets

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # Triton on the CPU
BLOCK_M, BLOCK_N, BLOCK_K = 128, 128, 128


@triton.jit
def naive_mxfp8_mm_kernel(
    a_ptr, a_s_ptr, b_ptr, b_s_ptr, bias_ptr, out_ptr, M, N, K, scale_tiles_per_row,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out [M, N] = a @ b.T (+ bias) for canonical MXFP8 a [M, K] and b [N, K]: per K step, both
    tiles decoded to float32 (e4m3 times its block's power-of-two scale), one tl.dot into a
    float32 accumulator. TF32 is exact here: the decoded values have 4 significant bits."""
    # int64 offsets: no overflow for large operands (and no overflow checks in Triton's interpreter)
    rows_a = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_b = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        blocks = k0 // 32 + tl.arange(0, BLOCK_K // 32).to(tl.int64)
        a_mask = (rows_a[:, None] < M) & (ks[None, :] < K)
        b_mask = (rows_b[:, None] < N) & (ks[None, :] < K)
        a = tl.load(a_ptr + rows_a[:, None] * K + ks[None, :], mask=a_mask, other=0.0)
        b = tl.load(b_ptr + rows_b[:, None] * K + ks[None, :], mask=b_mask, other=0.0)
        # scales of rows past M / N and blocks past K are padding: never read (they may hold anything)
        a_e = tl.load(a_s_ptr + swizzled_scale_offsets(rows_a, blocks, scale_tiles_per_row),
                      mask=(rows_a[:, None] < M) & (blocks[None, :] < K // 32), other=127)
        b_e = tl.load(b_s_ptr + swizzled_scale_offsets(rows_b, blocks, scale_tiles_per_row),
                      mask=(rows_b[:, None] < N) & (blocks[None, :] < K // 32), other=127)
        a = tl.reshape(a.to(tl.float32), (BLOCK_M, BLOCK_K // 32, 32)) * decode_e8m0(a_e)[:, :, None]
        b = tl.reshape(b.to(tl.float32), (BLOCK_N, BLOCK_K // 32, 32)) * decode_e8m0(b_e)[:, :, None]
        a = tl.reshape(a, (BLOCK_M, BLOCK_K))
        b = tl.reshape(b, (BLOCK_N, BLOCK_K))
        acc = tl.dot(a, tl.trans(b), acc, input_precision="tf32")
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + rows_b, mask=rows_b < N, other=0.0).to(tl.float32)[None, :]
    mask = (rows_a[:, None] < M) & (rows_b[None, :] < N)
    tl.store(out_ptr + rows_a[:, None] * N + rows_b[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


class NaiveTritonMXFP8(dq.Backend):
    """The backend: a spec (what it runs) and one method per op in spec.ops."""

    spec = dq.BackendSpec(
        name="naive_triton",
        description="examples/own_backend.py: naive Triton MXFP8 GEMM (both operands decoded, TF32 tl.dot)",
        ops=("mxfp8_mm",),
        cpu=INTERPRETED,  # CPU tensors only through Triton's interpreter
        capabilities=((8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)),  # TF32 tl.dot
    )

    def mxfp8_mm(self, a_q, a_s, b_q, b_s, bias, out_dtype):
        (m, k), n = a_q.shape, b_q.shape[0]
        # (Triton's interpreter rounds float32 to bf16 toward zero: there, write float32 and round in torch)
        out = torch.empty(m, n, dtype=torch.float32 if INTERPRETED else out_dtype, device=a_q.device)
        grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
        scale_tiles_per_row = dq.MXFP8.scale_shape(m, k)[1] // 4  # padded scale columns / 4
        naive_mxfp8_mm_kernel[grid](a_q, a_s, b_q, b_s, bias, out, m, n, k, scale_tiles_per_row,
                                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
        return out.to(out_dtype)


def tiny_flux() -> torch.nn.Module:
    import diffusers

    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=32, num_layers=1, num_single_layers=1, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    ).to(torch.bfloat16).eval()  # fmt: skip


def flux_inputs(device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 32, generator=g), encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
        pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.full((1,), 0.5),
        img_ids=ids.reshape(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.full((1,), 3.5),
    )  # fmt: skip
    ids = ("img_ids", "txt_ids")  # positions stay float32
    return {k: v.to(device, torch.float32 if k in ids else torch.bfloat16) for k, v in inputs.items()}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


@torch.no_grad()
def run_in_flux(device: torch.device) -> tuple[float, float]:
    """The tiny FLUX with every MXFP8-able Linear on our backend: its output's relative error
    against the same quantized model on the reference backend, and against the bf16 model."""
    model, inputs = tiny_flux().to(device), flux_inputs(device)
    bf16 = model(**inputs).sample
    dq.diffusers.quantize(model, "mxfp8", backend="naive_triton", verbose=False)
    ours = model(**inputs).sample
    dq.set_backend(model, "reference")
    reference = model(**inputs).sample
    return rel_err(ours, reference), rel_err(ours, bf16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the benchmark rows (dq-kernels bench gemm --json)")
    args = parser.parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu" and not INTERPRETED:
        print("No CUDA device: run with TRITON_INTERPRET=1 to run the Triton kernel on the CPU")
        return 1

    dq.register_backend(NaiveTritonMXFP8())  # chosen by name only (auto=True would let auto rank it)

    # 1. In a model: a tiny FLUX quantized to MXFP8 with backend="naive_triton"
    vs_reference, vs_bf16 = run_in_flux(device)
    flux_ok = vs_reference < 1e-2
    print(f"tiny FLUX on naive_triton: rel err {vs_reference:.1e} vs the reference backend, {vs_bf16:.1e} vs bf16")

    # 2. Benchmarked beside auto's choice and cuBLAS (on a CPU: the numerics only, on small shapes)
    shapes = ["128x256x192"] if INTERPRETED else ["16x3072x3072", "4096x3072x3072", "4096x3072x12288"]
    bench = ["bench", "gemm", "--formats", "mxfp8", "--backends", "naive_triton", "auto", "--shape", *shapes]
    bench_rc = cli.main(bench + (["--json", args.json] if args.json else []))

    # 3. Checked against the fp64 oracle (the quick grid on a CPU)
    selftest_rc = cli.main(["selftest", "--backends", "naive_triton"])

    ok = flux_ok and bench_rc == 0 and selftest_rc == 0
    print(f"own_backend: tiny FLUX {'ok' if flux_ok else 'FAILED'}, bench gemm rc {bench_rc}, "
          f"selftest rc {selftest_rc}: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
