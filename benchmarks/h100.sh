#!/usr/bin/env bash
# Build, test and benchmark dq_kernels on an offline GPU host (the lent H100), one step per
# argument, logs under $OUT (default ./h100-out). Expects the wheels of
# ../shared/tools/offline-wheels.sh in .whl/ (torchao, diffusers, nvidia-cutlass).
#   bash benchmarks/h100.sh build gputests host ...
# Steps:
#   build      pip install -e . without build isolation, sm_90a only (the device's torch); a
#              library in .native/ (from an earlier call's $OUT, same csrc/) is used instead
#   baseline   the same for a checkout in .baseline/ (git archive of the commit to compare against)
#   gputests   pytest -m gpu (all GPU tests)
#   host       dq-kernels bench host for the baseline (if built) and this tree
#   gemm       dq-kernels bench gemm --preset flux, both ops
#   model      dq-kernels bench model flux, eager and regional-cudagraphs, batch 1 and 4
#   castmodes  regional-cudagraphs rows of FLUX (batch 1 and 4), QwenImage and LTX-2 (batch 1) with
#              each DQ_KERNELS_COMPILE_CAST mode in CAST_MODES (default "op shared": the linear op and the default,
#              one cast per activation; add fused for the third), one after the other on this
#              machine: the A/B of docs/compile.md (about 4 minutes a mode)
#   selftest   dq-kernels selftest, the full grid, every backend here
#   sanitize   benchmarks/sanitize.py (every sm_90a GEMM entry point) under compute-sanitizer memcheck
#              (small and large shapes) and racecheck (small shapes)
#   readme     the README's commands: the quickstart snippet, then its dq-kernels commands
#   sliced     benchmarks/sliced_decode.py: decode_cublas's MXFP8 weight decoded in L2-sized slices
#   plans      benchmarks/mixed_plans.py: the mixed-input kernel's token tiles and shared tiles at M 128-512
set -uo pipefail
out=${OUT:-$PWD/h100-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site  # $PWD: the scripts under benchmarks/ import this checkout
export MAX_JOBS=16 DQ_KERNELS_CUDA_ARCHS=90a CUDA_MODULE_LOADING=LAZY
build() {  # build DIR LOG
  (cd "$1" && DQ_KERNELS_BUILD_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps -e . >"$2" 2>&1 \
     && echo "built $1" || { echo "BUILD FAILED $1"; tail -30 "$2"; })
}
for step in "$@"; do
  start=$(date +%s)
  case $step in
    build)
      if [ -f .native/libdq_kernels_native.so ]; then  # built by an earlier call from the same csrc/
        cp .native/libdq_kernels_native.so dq_kernels/ && echo "using .native/libdq_kernels_native.so"
      else
        build . "$out/build.log"; cp dq_kernels/libdq_kernels_native.so "$out/"
      fi ;;
    baseline) build .baseline "$out/build-baseline.log"; pip uninstall -q -y dq-kernels; build . "$out/build.log" ;;
    gputests) timeout ${GPUTESTS_TIMEOUT:-420} python3 -m pytest python_tests -m gpu -q -p no:cacheprovider >"$out/gputests.log" 2>&1; tail -15 "$out/gputests.log" ;;
    host)
      if [ -f .baseline/dq_kernels/libdq_kernels_native.so ]; then  # this tree's host benchmark on the baseline
        cp dq_kernels/bench/host.py .baseline/dq_kernels/bench/host.py
        (cd .baseline && python3 -c "import torch; from dq_kernels.bench import host
rows, _ = host.run(host.DEFAULT_SHAPES, host.FORMATS, torch.device('cuda')); print(host.table(rows))" \
          >"$out/host-baseline.log" 2>&1); tail -8 "$out/host-baseline.log"
      fi
      python3 -m dq_kernels bench host --json "$out/host-h100.json" --profile mxfp8 >"$out/host.log" 2>&1; tail -8 "$out/host.log" ;;
    gemm) python3 -m dq_kernels bench gemm --preset flux --json "$out/gemm-h100.json" >"$out/gemm.log" 2>&1; tail -40 "$out/gemm.log" ;;
    model) python3 -m dq_kernels bench model flux --batch 1 4 --steps 6 --formats bf16 mxfp8 nvfp4 --backends auto \
             --compile none regional-cudagraphs --json "$out/model-h100.json" >"$out/model.log" 2>&1; tail -20 "$out/model.log" ;;
    castmodes)
      for mode in ${CAST_MODES:-op shared}; do
        DQ_KERNELS_COMPILE_CAST=$mode python3 -m dq_kernels bench model flux --batch 1 4 --steps 6 --formats bf16 mxfp8 nvfp4 \
          --backends auto --compile regional-cudagraphs --json "$out/model-flux-$mode.json" >"$out/model-flux-$mode.log" 2>&1
        echo "flux $mode rc=$?"; tail -8 "$out/model-flux-$mode.log"
        for name in qwenimage ltx2; do
          DQ_KERNELS_COMPILE_CAST=$mode python3 -m dq_kernels bench model $name --batch 1 --steps 4 --formats bf16 mxfp8 nvfp4 \
            --backends auto --compile regional-cudagraphs --json "$out/model-$name-$mode.json" >"$out/model-$name-$mode.log" 2>&1
          echo "$name $mode rc=$?"; tail -4 "$out/model-$name-$mode.log"
        done
      done ;;
    selftest) timeout ${SELFTEST_TIMEOUT:-300} python3 -m dq_kernels selftest --json "$out/selftest-h100.json" \
                >"$out/selftest.log" 2>&1; echo "selftest rc=$?"; grep -v "^\[" "$out/selftest.log" | tail -40 ;;
    sanitize)
      timeout 400 compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize.py \
        >"$out/memcheck.log" 2>&1; echo "memcheck rc=$?"; tail -4 "$out/memcheck.log"
      timeout 400 compute-sanitizer --tool racecheck --error-exitcode 1 python3 benchmarks/sanitize.py --small \
        >"$out/racecheck.log" 2>&1; echo "racecheck rc=$?"; tail -4 "$out/racecheck.log" ;;
    readme)
      (mkdir -p /tmp/readme && cd /tmp/readme && export PYTHONPATH=$OLDPWD:$PYTHONPATH \
        && python3 -c "import re; exec(re.findall(r'\`\`\`python\n(.*?)\`\`\`', open('$OLDPWD/README.md').read(), re.S)[0])" \
        && echo "quickstart snippet: ok" \
        && python3 -m dq_kernels bench gemm --shape 4096x3072x3072 --json gemm.json --plot gemm.png | tail -3 \
        && python3 -m dq_kernels bench model flux --tiny --json model.json | tail -4 \
        && python3 -m dq_kernels bench host --formats bf16 mxfp8 | tail -3 \
        && python3 -m dq_kernels bench quant --shape 4096x3072 | tail -3 && echo "README commands: ok") >"$out/readme.log" 2>&1
      echo "readme rc=$?"; grep -v register_constant "$out/readme.log" | tail -20 ;;
    sliced) timeout 300 python3 benchmarks/sliced_decode.py --json "$out/sliced-decode-h100.json" >"$out/sliced.log" 2>&1
            echo "sliced rc=$?"; tail -10 "$out/sliced.log" ;;
    plans) timeout 300 python3 benchmarks/mixed_plans.py --json "$out/mixed-plans-h100.json" >"$out/plans.log" 2>&1
           echo "plans rc=$?"; tail -10 "$out/plans.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
