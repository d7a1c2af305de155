#!/usr/bin/env bash
# Helper h2's device run (issues 18/19, the CUDA casts of csrc/cast.cu), on the lent H100 from the
# repository root, logs under $OUT (default ./h100-out):
#   bash benchmarks/h2-device.sh
# 1. build: benchmarks/h100.sh build (pip install -e ., sm_90a; needs the .whl/ wheels h100.sh names)
# 2. tests: python_tests/test_quantize_cuh.py (host harness, nvcc), test_cast.py (the native casts
#    against formats on the GPU, bit for bit), test_triton_cast.py (the Triton casts, for contrast),
#    test_native.py and test_backends.py (the library's and the registry's checks)
# 3. selftest of the cutlass and triton_cast backends (the casts bit for bit, the GEMMs vs fp64)
# 4. dq-kernels bench quant: triton_cast, cutlass, torchao, torchao compiled on the 9 default shapes
# 5. benchmarks/cast_decoded.py: the decoded casts (Triton vs CUDA)
set -uo pipefail
out=${OUT:-$PWD/h100-out}; mkdir -p "$out"
bash benchmarks/h100.sh build || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export CUDA_MODULE_LOADING=LAZY
python3 -c "from dq_kernels import native; print(native.status()); print(native.build_info())" | tee "$out/h2-native.log"
timeout 420 python3 -m pytest python_tests/test_quantize_cuh.py python_tests/test_cast.py python_tests/test_triton_cast.py \
  python_tests/test_native.py python_tests/test_backends.py -q -p no:cacheprovider -rs >"$out/h2-tests.log" 2>&1
echo "tests rc=$?"; tail -25 "$out/h2-tests.log"
timeout 300 python3 -m dq_kernels selftest --backends cutlass triton_cast --json "$out/h2-selftest-h100.json" \
  >"$out/h2-selftest.log" 2>&1; echo "selftest rc=$?"; grep -v "^\[" "$out/h2-selftest.log" | tail -30
timeout 600 python3 -m dq_kernels bench quant --json "$out/h2-quant-h100.json" --plot "$out/h2-quant-h100.png" \
  >"$out/h2-quant.log" 2>&1; echo "bench quant rc=$?"; tail -45 "$out/h2-quant.log"
timeout 300 python3 benchmarks/cast_decoded.py --json "$out/h2-cast-decoded-h100.json" >"$out/h2-cast-decoded.log" 2>&1
echo "cast_decoded rc=$?"; tail -75 "$out/h2-cast-decoded.log"
