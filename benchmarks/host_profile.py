"""Where an eager quantized Linear spends its host time, on a CUDA device (docs/host-path.md).

    python3 benchmarks/host_profile.py OUT_DIR      # from the repository root

Prints the host time per call (``bench host``'s method) of a 3072 -> 3072 Linear with bias at
M = 1, 16 and 4096 for bf16, MXFP8 (auto and cutlass), NVFP4 and W4A16, writes each quantized
path's cProfile to OUT_DIR, then times the one-call native Linear alone (its Python wrapper and
the bare ctypes call) and a torch.empty of the output.
"""
import contextlib
import cProfile
import io
import pstats
import sys

import torch

sys.path.insert(0, ".")  # the checkout, not an installed dq_kernels
import dq_kernels  # noqa: E402
from dq_kernels import formats, native  # noqa: E402
from dq_kernels.bench import host  # noqa: E402

out = sys.argv[1]
dev = torch.device("cuda")

def t(call):
    return host.host_us(call, dev)

# primitives
x16 = torch.randn(16, 3072, device=dev, dtype=torch.bfloat16)
b = torch.randn(3072, device=dev, dtype=torch.bfloat16)
print(f"torch.empty(16,3072) cuda: {t(lambda: torch.empty(16, 3072, device=dev, dtype=torch.bfloat16)):.2f} us")
print(f"torch.empty(4) cuda: {t(lambda: torch.empty(4, device=dev, dtype=torch.uint8)):.2f} us")
print(f"x.new_empty: {t(lambda: x16.new_empty((16, 3072))):.2f} us")
print(f"bias.to(float32): {t(lambda: b.to(torch.float32)):.2f} us")
lib = native._library().lib
print(f"ctypes dq_build_info: {t(lambda: lib.dq_build_info()):.2f} us")
print(f"current_raw_stream: {t(lambda: native.current_raw_stream(0)):.2f} us")
print(f"data_ptr: {t(lambda: x16.data_ptr()):.3f} us")
for m in (1, 16, 4096):
    xb = torch.randn(1, m, 3072, device=dev, dtype=torch.bfloat16)
    for name in ("bf16", "mxfp8", "mxfp8@cutlass", "nvfp4", "nvfp4_w4a16"):
        fmt, _, backend = name.partition("@")
        lin = host._linear(fmt, 3072, 3072, "cuda")
        scope = dq_kernels.use_backend(backend) if backend else contextlib.nullcontext()
        with torch.inference_mode(), scope:
            us = t(lambda: lin(xb))
            print(f"{name:14s} M={m}: {us:.1f} us", flush=True)
            if fmt != "bf16":
                p = cProfile.Profile(); torch.cuda.synchronize(); torch.cuda._sleep(host.SPIN_CYCLES)
                p.enable()
                for _ in range(100):
                    lin(xb)
                p.disable()
                s = io.StringIO(); pstats.Stats(p, stream=s).sort_stats("tottime").print_stats(40)
                s2 = io.StringIO(); pstats.Stats(p, stream=s2).sort_stats("cumulative").print_stats(40)
                open(f"{out}/prof-{name.replace('@', '-on-')}-{m}.txt", "w").write(s.getvalue() + "\n\n" + s2.getvalue())
        torch.cuda.synchronize()

# native pieces: the raw ctypes call of the one-call Linear (C side + ctypes), per kernel
for m, kernel in ((1, "quantizing_skinny"), (16, "skinny"), (4096, "mixed")):
    x = torch.randn(m, 3072, device=dev, dtype=torch.bfloat16)
    w = torch.randn(3072, 3072, device=dev) * 0.05
    bias = torch.randn(3072, device=dev, dtype=torch.bfloat16)
    out = torch.empty(m, 3072, device=dev, dtype=torch.bfloat16)
    for fmt in ("mxfp8", "nvfp4"):
        if fmt == "mxfp8":
            q, s = formats.quantize_mxfp8(w)
            call = lambda: native.sm90_mxfp8_linear(x, q, s, bias, out, "rceil", kernel, checked=False)
            size = native._linear_workspace_bytes(0, "mxfp8", kernel, m, 3072, 3072)
            ws = native.stream_workspace(size, torch.device("cuda", 0), native.current_raw_stream(0))
            wsp = native._pointer_and_bytes(ws)
            args = (x.data_ptr(), 1, 3072, q.data_ptr(), s.data_ptr(), bias.data_ptr(), 1, out.data_ptr(), m, 3072, 3072, 0,
                    native.SM90_LINEAR_KERNELS[kernel], *wsp, native.current_raw_stream(0))
            raw = lambda: lib.dq_sm90_mxfp8_linear(*args)
        else:
            q, s, ts = formats.quantize_nvfp4(w)
            ts = ts.reshape(())
            call = lambda: native.sm90_nvfp4_linear(x, q, s, ts, None, bias, out, kernel, checked=False)
            size = native._linear_workspace_bytes(0, "nvfp4", kernel, m, 3072, 3072)
            ws = native.stream_workspace(size, torch.device("cuda", 0), native.current_raw_stream(0))
            wsp = native._pointer_and_bytes(ws)
            args = (x.data_ptr(), 1, 3072, q.data_ptr(), s.data_ptr(), ts.data_ptr(), None, bias.data_ptr(), 1, out.data_ptr(),
                    m, 3072, 3072, native.SM90_LINEAR_KERNELS[kernel], *wsp, native.current_raw_stream(0))
            raw = lambda: lib.dq_sm90_nvfp4_linear(*args)
        print(f"native {fmt} {kernel} M={m}: wrapper {t(call):.1f} us, raw ctypes {t(raw):.1f} us", flush=True)
print(f"torch.empty(4096,3072) cuda: {t(lambda: torch.empty(4096, 3072, device=dev, dtype=torch.bfloat16)):.2f} us")
