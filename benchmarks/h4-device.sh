#!/usr/bin/env bash
# Issue 22 (helper h4): regional-cudagraphs for QwenImage and LTX-2 on the GPU, one step per
# argument, logs under $OUT (default ./h4-out). Run after `bash benchmarks/h100.sh build` (the same
# wheels in .whl/ and PYTHONPATH, and the native library built).
#   bash benchmarks/h4-device.sh gputest tiny            # first: minutes
#   bash benchmarks/h4-device.sh full-qwenimage          # later: full size, one command each
#   bash benchmarks/h4-device.sh full-ltx2
# Steps and what to expect:
#   gputest         test_regional_cudagraphs_replays_the_uncaptured_step (flux, qwenimage, ltx2;
#                   tiny, nvfp4): the captured steps' latent equals the uncaptured ones' bit for bit
#   tiny            bench model --tiny for qwenimage and ltx2 with --compile regional
#                   regional-cudagraphs: the bf16 regional-cudagraphs row reads rel err 0.0000 (its
#                   reference is bf16 regional), each quantized row that of its regional row
#   full-qwenimage  the committed QwenImage rows again (none, regional), now with regional-cudagraphs
#   full-ltx2       the same for LTX-2
# --backends auto only: torchao's stock MX paths under capture are not what issue 22 asks.
set -uo pipefail
out=${OUT:-$PWD/h4-out}; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export CUDA_MODULE_LOADING=LAZY
for step in "$@"; do
  start=$(date +%s)
  case $step in
    gputest)
      timeout 540 python3 -m pytest python_tests/test_bench_model.py -m gpu -q -p no:cacheprovider \
        -k regional_cudagraphs_replays >"$out/h4-gputest.log" 2>&1
      echo "gputest rc=$?"; tail -15 "$out/h4-gputest.log" ;;
    tiny)
      for name in qwenimage ltx2; do
        python3 -m dq_kernels bench model $name --batch 1 --steps 4 --formats bf16 mxfp8 nvfp4 --backends auto \
          --compile regional regional-cudagraphs --tiny --json "$out/h4-$name-tiny.json" >"$out/h4-$name-tiny.log" 2>&1
        echo "$name tiny rc=$?"; tail -12 "$out/h4-$name-tiny.log"
      done ;;
    full-qwenimage|full-ltx2)
      name=${step#full-}
      python3 -m dq_kernels bench model $name --batch 1 --steps 4 --formats bf16 mxfp8 nvfp4 --backends auto \
        --compile none regional regional-cudagraphs --json "$out/model-$name-h100.json" >"$out/h4-$name-full.log" 2>&1
      echo "$name full rc=$?"; tail -16 "$out/h4-$name-full.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
