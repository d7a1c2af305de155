#!/usr/bin/env bash
# Helper s11-h1 (issue 19): the host time of an eager quantized Linear on the H100 after the Python
# trims of its path (no reshape of the tensor scales, the raw stream once per native call, no
# reshape of a 2-D x, new_empty outputs, cheaper device checks) and the mixed-input kernel's kept
# TMA maps (csrc/sm90_mixed_gemm.cu), beside the commit before them. Run from the repository root
# on the GPU host with the wheels of benchmarks/h100.sh in .whl/; logs and JSON under $OUT
# (default ./h100-out). For the before/after rows, put the commit before the change in .baseline/
# first, where the git history is (it travels as untracked files):
#   rm -rf .baseline && mkdir .baseline && git archive aebbccd | tar -x -C .baseline
#   bash benchmarks/s11h1-device.sh              # every step, about 8 minutes with .baseline/
#   bash benchmarks/s11h1-device.sh tests parts  # some of them (host first on a fresh machine: it builds)
# Steps:
#   host    builds this tree (and .baseline/ where it exists: benchmarks/h100.sh baseline, else
#           build), then dq-kernels bench host for both (h100.sh host: host-h100.json, host.log,
#           host-baseline.log): per eager Linear 3072 -> 3072 with bias, M = 16 and 4096
#   tests   the GPU tests of the changed paths: test_skinny_linear, test_sm90 (the kept maps at one
#           address among them), test_host_path, test_native
#   parts   per layer of the one-call Linear, both trees (s11h1-parts.log): ops.*_linear_eager, the
#           cutlass backend's method, the native wrapper (checked=False) and its bare ctypes call
#           (the C side: the kept TMA maps show at M = 4096, the mixed-input kernel), M = 16 and 4096
set -uo pipefail
out=${OUT:-$PWD/h100-out}; mkdir -p "$out"
steps=${*:-host tests parts}
for step in $steps; do
  start=$(date +%s)
  case $step in
    host)
      if [ -d .baseline/dq_kernels ]; then OUT=$out bash benchmarks/h100.sh baseline host
      else OUT=$out bash benchmarks/h100.sh build host; fi ;;
    tests)
      PYTHONPATH=/tmp/site timeout 300 python3 -m pytest python_tests/test_skinny_linear.py python_tests/test_sm90.py \
        python_tests/test_host_path.py python_tests/test_native.py -m gpu -q -p no:cacheprovider \
        >"$out/s11h1-tests.log" 2>&1; tail -15 "$out/s11h1-tests.log" ;;
    parts)
      cat >/tmp/s11h1_parts.py <<'EOF'
import torch
import dq_kernels as dq
from dq_kernels import formats, native, ops
from dq_kernels.bench.host import host_us

device = torch.device("cuda", torch.cuda.current_device())
lib, cutlass = native._library().lib, dq.get_backend("cutlass")
k = n = 3072
w = torch.randn(n, k, device=device) * 0.05
weights = {"mxfp8": formats.quantize_mxfp8(w), "nvfp4": formats.quantize_nvfp4(w)}
bias = torch.randn(n, device=device, dtype=torch.bfloat16)
print(dq.__file__)
with torch.inference_mode():
    for m, kernel in ((16, "skinny"), (4096, "mixed")):
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
        stream = native.current_raw_stream(device.index)
        for fmt, (q, s, *ts) in weights.items():
            size = native._linear_workspace_bytes(device.index, fmt, kernel, m, n, k)
            workspace = torch.empty(max(size, 16), dtype=torch.uint8, device=device)
            tail = (bias.data_ptr(), 1, out.data_ptr(), m, n, k)  # bias dtype code 1: bfloat16
            rest = (native.SM90_LINEAR_KERNELS[kernel], workspace.data_ptr() if size else None, size, stream)
            if fmt == "mxfp8":
                entry, args = lib.dq_sm90_mxfp8_linear, (x.data_ptr(), 1, k, q.data_ptr(), s.data_ptr(), *tail, 0, *rest)
                calls = {"eager op": lambda: ops.mxfp8_linear_eager(x, q, s, bias, "rceil", "cutlass"),
                         "backend": lambda: cutlass.mxfp8_linear(x, q, s, bias, "rceil"),
                         "wrapper": lambda: native.sm90_mxfp8_linear(x, q, s, bias, out, "rceil", kernel, checked=False)}
            else:
                entry = lib.dq_sm90_nvfp4_linear
                args = (x.data_ptr(), 1, k, q.data_ptr(), s.data_ptr(), ts[0].data_ptr(), None, *tail, *rest)
                calls = {"eager op": lambda: ops.nvfp4_linear_eager(x, q, s, ts[0], None, bias, "cutlass"),
                         "backend": lambda: cutlass.nvfp4_linear(x, q, s, ts[0], None, bias),
                         "wrapper": lambda: native.sm90_nvfp4_linear(x, q, s, ts[0], None, bias, out, kernel, checked=False)}
            assert entry(*args) == 0, fmt
            calls["bare ctypes call"] = lambda: entry(*args)
            times = ", ".join(f"{name} {host_us(call, device):.1f}" for name, call in calls.items())
            print(f"{fmt} M={m} ({kernel}), us per call: {times}", flush=True)
EOF
      { echo "== this tree"; PYTHONPATH=/tmp/site python3 - </tmp/s11h1_parts.py
        if [ -d .baseline/dq_kernels ]; then
          echo "== baseline"; (cd .baseline && PYTHONPATH=/tmp/site python3 - </tmp/s11h1_parts.py); fi
      } >"$out/s11h1-parts.log" 2>&1; grep -v register_constant "$out/s11h1-parts.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
