#!/usr/bin/env bash
# Helper h5 (issues 18/19): the fused quantized Linear at small M on the H100 (the skinny kernels
# quantizing their bf16/f16 activation themselves). Run from the repository root on the GPU host,
# with the wheels of benchmarks/h100.sh in .whl/; logs and JSON under $OUT (default ./h100-out).
#   bash benchmarks/h5-device.sh            # every step
#   bash benchmarks/h5-device.sh sweep host # some of them (build first on a fresh machine)
# Steps:
#   build   the sm_90a library (benchmarks/h100.sh build), its skinny kernels' registers and spills
#   tests   the GPU tests of the fused kernels and of the skinny kernels (regressions), the SASS check
#   gemm    dq-kernels bench gemm at 1x3072x18432 and 16x3072x18432, mm and linear, auto / cutlass /
#           triton_sm90 (the linear rows of cutlass and auto at M <= 16 are the fused kernel)
#   sweep   fused vs cast + skinny mm vs the skinny mm alone, M 1..64, to set
#           cutlass.QUANTIZING_SKINNY_MAX_M (the fused kernel's cost grows with M)
#   host    dq-kernels bench host at M = 1 and 16 (fused at M = 1 only, cutlass.QUANTIZING_SKINNY_MAX_M),
#           then the same with the limit raised to 64 (NVFP4 fused at 16 too; MXFP8 at M = 16 runs
#           triton_sm90's mm, unfused)
set -uo pipefail
out=${OUT:-$PWD/h100-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
steps=${*:-build tests gemm sweep host}
for step in $steps; do
  start=$(date +%s)
  case $step in
    build)
      OUT=$out bash benchmarks/h100.sh build
      cuobjdump --dump-resource-usage dq_kernels/libdq_kernels_native.so 2>&1 | grep -A1 skinny_gemm_kernel \
        >"$out/h5-skinny-registers.log"
      grep -o "REG:[0-9]* STACK:[0-9]*" "$out/h5-skinny-registers.log" | sort | uniq -c ;;
    tests)
      timeout 600 python3 -m pytest python_tests/test_skinny_linear.py python_tests/test_sm90.py -q -p no:cacheprovider \
        -k "skinny or linear or sass" >"$out/h5-tests.log" 2>&1; tail -15 "$out/h5-tests.log" ;;
    gemm)
      python3 -m dq_kernels bench gemm --shape 1x3072x18432 16x3072x18432 --formats mxfp8 nvfp4 --ops mm linear \
        --backends auto cutlass triton_sm90 --json "$out/h5-gemm.json" >"$out/h5-gemm.log" 2>&1; tail -40 "$out/h5-gemm.log" ;;
    sweep)
      python3 - >"$out/h5-sweep.log" 2>&1 <<'EOF'
import torch
import dq_kernels as dq
from dq_kernels import formats
from dq_kernels.bench.timing import median_us

cutlass = dq.get_backend("cutlass")
for k, n in ((3072, 18432), (3072, 3072), (12288, 3072)):
    w = torch.randn(n, k, device="cuda") * 0.05
    mx, nv = formats.quantize_mxfp8(w), formats.quantize_nvfp4(w)
    for m in (1, 2, 4, 8, 16, 32, 64):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        bf16 = median_us(lambda w=w.bfloat16(): torch.nn.functional.linear(x, w))
        cases = {
            "mxfp8": (lambda: cutlass.mxfp8_linear(x, *mx, None, "rceil"),
                      lambda: dq.mxfp8_linear(x, *mx, cast_backend="triton_cast", mm_backend="cutlass"),
                      lambda q=dq.quantize_mxfp8(x): dq.mxfp8_mm(*q, *mx, out_dtype=x.dtype, backend="cutlass")),
            "nvfp4 dynamic": (lambda: cutlass.nvfp4_linear(x, *nv, None, None),
                              lambda: dq.nvfp4_linear(x, *nv, cast_backend="triton_cast", mm_backend="cutlass"),
                              lambda q=dq.quantize_nvfp4(x): dq.nvfp4_mm(*q, *nv, out_dtype=x.dtype, backend="cutlass")),
        }
        ts = torch.tensor(0.01, device="cuda")
        cases["nvfp4 static"] = (
            lambda: cutlass.nvfp4_linear(x, *nv, ts, None),
            lambda: dq.nvfp4_linear(x, *nv, ts, cast_backend="triton_cast", mm_backend="cutlass"),
            cases["nvfp4 dynamic"][2])
        for name, (fused, unfused, mm) in cases.items():
            for fn in (fused, unfused, mm):
                fn()
            f, u, g = median_us(fused), median_us(unfused), median_us(mm)
            print(f"{m}x{k}x{n} {name:14s} fused {f:7.1f} us ({bf16 / f:.2f}x bf16)  cast+mm {u:7.1f} us "
                  f"({bf16 / u:.2f}x)  mm alone {g:7.1f} us ({bf16 / g:.2f}x)  fused/mm speedup kept {g / f:.0%}",
                  flush=True)
EOF
      cat "$out/h5-sweep.log" | tail -70 ;;
    host)
      python3 -m dq_kernels bench host --shape 1x3072x3072 16x3072x3072 --json "$out/h5-host.json" \
        >"$out/h5-host.log" 2>&1; tail -14 "$out/h5-host.log"
      python3 -c "import torch; from dq_kernels.backends import cutlass; from dq_kernels.bench import host
cutlass.QUANTIZING_SKINNY_MAX_M = 64
rows, _ = host.run(((1, 3072, 3072), (16, 3072, 3072)), host.FORMATS, torch.device('cuda')); print(host.table(rows))" \
        >"$out/h5-host-fused-to-64.log" 2>&1; tail -14 "$out/h5-host-fused-to-64.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
