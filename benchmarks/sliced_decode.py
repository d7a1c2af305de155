"""An experiment for decode_cublas's MXFP8 GEMM (what `auto` runs above M = 2048 on an H100): the
weight decoded in slices of rows into one reused bf16 buffer small enough to stay in the L2, each
slice followed by its cuBLAS GEMM into its columns of the output, against the whole weight decoded
into one [N, K] buffer (decode_cublas today, whose decode writes N * K * 2 bytes to memory for
cuBLAS to read back). At the FLUX shapes of M >= 512, from a bf16 activation (the decoded cast's
output): GPU time (``bench.timing``, cold L2, median) of bf16 cuBLAS, the whole decode + GEMM and
the sliced one for each slice size. Checks each sliced result against the whole one (float32
summation order only). Needs a CUDA GPU and the native library. Run on an H100 (2026-12-07):
slower at every shape, so not adopted (docs/benchmarks.md, benchmarks/results/sliced-decode-h100.json).

    python benchmarks/sliced_decode.py [--slice-mib 8 16 24] [--json PATH]
"""

import argparse
import json
import sys

import torch

from dq_kernels import formats, native
from dq_kernels.backends import get_backend
from dq_kernels.bench import gemm, report, shapes, timing


def slice_rows(n: int, k: int, budget: int) -> int:
    """Weight rows per slice: whole 128-row scale blocks, slices as equal as that allows, each of
    at most ``budget`` bytes of bf16 (one block at least); ``n`` when the whole weight fits."""
    slices = -(-n * k * 2 // budget)
    return min(n, (-(-n // slices) + 127) // 128 * 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slice-mib", type=int, nargs="+", default=[8, 16, 24], help="slice buffer sizes, MiB")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    backend = get_backend("decode_cublas")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False  # as decode_cublas runs cuBLAS
    rows = []
    for shape in (s for s in shapes.FLUX if s.M >= 512):
        m, n, k = shape.M, shape.N, shape.K
        a, w = gemm.random_operands(shape, "cuda")  # as `bench gemm` makes them
        b_q, b_s = formats.quantize_mxfp8(w)

        def whole():  # decode_cublas as it runs today
            return backend.mxfp8_mm_decoded(a, b_q, b_s, None, torch.bfloat16)

        expected = whole()
        w16 = formats.dequantize_mxfp8(b_q, b_s, torch.bfloat16)
        row = {"M": m, "N": n, "K": k, "label": shape.label,
               "bf16_us": round(timing.median_us(lambda: torch.mm(a, w16.t())), 1),
               "whole_us": round(timing.median_us(whole), 1)}
        for mib in args.slice_mib:
            rows_per_slice = slice_rows(n, k, mib << 20)
            if rows_per_slice == n:
                continue
            buffer = torch.empty(rows_per_slice, k, dtype=torch.bfloat16, device="cuda")
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")

            def sliced(rows_per_slice=rows_per_slice, buffer=buffer, out=out):
                for first in range(0, n, rows_per_slice):
                    end = min(n, first + rows_per_slice)
                    b = buffer[: end - first]
                    native.dequantize_mxfp8(b_q[first:end], b_s[first : first + rows_per_slice], b, checked=False)
                    torch.mm(a, b.t(), out=out[:, first:end])
                return out

            torch.testing.assert_close(sliced().float(), expected.float(), rtol=2**-7,
                                       atol=1e-5 * expected.float().abs().max().item())
            row[f"sliced_{mib}mib_rows"] = rows_per_slice
            row[f"sliced_{mib}mib_us"] = round(timing.median_us(sliced), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        header = report.json_header(torch.cuda.get_device_name(), "python " + " ".join(sys.argv), timing.METHOD)
        report.write_json(args.json, header | {"rows": rows})


if __name__ == "__main__":
    main()
