#!/usr/bin/env bash
# Issue 22 (helper h6): the activation cast fused into the op before it under torch.compile
# (docs/compile.md). For the lead, on the H100, from the repository root, after
# `bash benchmarks/h100.sh build` (same environment: the wheels in /tmp/site, PYTHONPATH set as
# h100.sh sets it). Logs under $OUT (default ./h6-out).
#   bash benchmarks/h6-device.sh            # all three steps
#   bash benchmarks/h6-device.sh gputest ab # some of them
# Steps:
#   gputest  the CPU and GPU tests of python_tests/test_compile_cast.py (GPU: inductor's fused cast
#            against the Triton cast kernels, and the compiled Linear against the eager one, with
#            cutlass)
#   code     inductor's generated code for GELU + Linear and LayerNorm + modulation + Linear at FLUX's
#            shapes (M 4096, K 3072, N 3072 / 12288), both modes, and each compiled module's time
#            (which kernels the cast fused into, and what it costs)
#   ab       dq-kernels bench model flux, batch 1 and 4, 6 steps, bf16 mxfp8 nvfp4, regional compile
#            + CUDA graphs, with DQ_KERNELS_COMPILE_CAST=op then fused
set -uo pipefail
out=${OUT:-$PWD/h6-out}; mkdir -p "$out"
steps=${*:-gputest code ab}
for step in $steps; do
  start=$(date +%s)
  case $step in
    gputest)
      TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout 600 python3 -m pytest python_tests/test_compile_cast.py -q -p no:cacheprovider -rs \
        >"$out/test_compile_cast.log" 2>&1; echo "gputest rc=$?"; tail -15 "$out/test_compile_cast.log" ;;
    code)
      for mode in op fused; do
        DQ_KERNELS_COMPILE_CAST=$mode TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 TORCH_LOGS=output_code python3 - \
          >"$out/code-$mode.log" 2>&1 <<'EOF'
import os, torch, torch.nn.functional as F
import dq_kernels as dq

torch.manual_seed(0)
m, k = 4096, 3072
mode = os.environ["DQ_KERNELS_COMPILE_CAST"]
norm = torch.nn.LayerNorm(k, elementwise_affine=False, eps=1e-6).cuda()
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
scale, shift = torch.randn(k, device="cuda", dtype=torch.bfloat16), torch.randn(k, device="cuda", dtype=torch.bfloat16)
h = torch.randn(m, 12288, device="cuda", dtype=torch.bfloat16)
for fmt in ("mxfp8", "nvfp4"):
    quantize = dq.MXFP8Weight.from_float if fmt == "mxfp8" else dq.NVFP4Weight.from_float
    w_in = quantize(torch.randn(3072, k, device="cuda"), backend="auto")
    w_ff = quantize(torch.randn(3072, 12288, device="cuda"), backend="auto")
    cases = {
        "layernorm+modulation+linear": (lambda x, s, b: F.linear(norm(x) * (1 + s) + b, w_in), (x, scale, shift)),
        "gelu+linear (FLUX FF out)": (lambda h: F.linear(F.gelu(h, approximate="tanh"), w_ff), (h,)),
    }
    for name, (fn, args) in cases.items():
        torch._dynamo.reset()
        with torch.no_grad():
            compiled = torch.compile(fn, fullgraph=True)
            for _ in range(3):
                compiled(*args)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                compiled(*args)
            end.record()
            torch.cuda.synchronize()
        print(f"RESULT {mode} {fmt} {name}: {start.elapsed_time(end) / 50 * 1000:.1f} us per call", flush=True)
EOF
        echo "code $mode rc=$?"; grep RESULT "$out/code-$mode.log"
      done ;;
    ab)
      for mode in op fused; do
        # a fresh inductor cache per mode: torch's AOTAutograd cache key does not see the mode (docs/compile.md)
        DQ_KERNELS_COMPILE_CAST=$mode TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python3 -m dq_kernels bench model flux --batch 1 4 --steps 6 \
          --formats bf16 mxfp8 nvfp4 --compile regional-cudagraphs --json "$out/model-$mode.json" \
          >"$out/model-$mode.log" 2>&1
        echo "ab $mode rc=$?"; tail -12 "$out/model-$mode.log"
      done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
