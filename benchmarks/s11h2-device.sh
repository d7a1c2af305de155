#!/usr/bin/env bash
# Helper s11-h2 (issue 19): NVFP4's dynamic tensor scale without the per-call memset (the amax pass
# writes one partial maximum per CTA, the cast reduces them). On the lent H100 from the repository
# root, with the wheels of benchmarks/h100.sh in .whl/; logs and JSON under $OUT (default ./h100-out).
#   bash benchmarks/s11h2-device.sh                  # every step
#   bash benchmarks/s11h2-device.sh compare host     # some of them (build and base first on a fresh machine)
# The baseline is the cast library of the commit before the change (BASE, default aebbccd): its
# csrc/ from `git archive` where the checkout has git, else from .baseline/csrc (make it before the
# run: mkdir -p .baseline && git archive aebbccd csrc | tar -x -C .baseline).
# Steps:
#   build    this tree's library (benchmarks/h100.sh build: pip install -e ., sm_90a)
#   base     the baseline's casts alone (cast.cu, dequantize.cu, library.cpp) as /tmp/s11h2-base.so
#   tests    pytest -m gpu of test_cast.py (the casts bit for bit vs formats; the amax partials with
#            many CTAs per column tile and with fewer CTAs than column tiles), test_skinny_linear.py
#            (the one-call Linear vs its two steps) and test_native.py
#   compare  s11h2-compare.json: per bf16 [M, K], the baseline's and this tree's NVFP4 casts (dynamic
#            tensor scale, canonical and decoded) bit for bit equal, and their GPU time
#            (timing.median_us, cold L2: the cast's GPU time must not get worse, amax pass included);
#            the host time of the bare C calls (bench.host.host_us): the casts of both libraries (the
#            memset gone: dynamic minus static was memset + amax launch, now the amax launch alone),
#            and this tree's one-call Linear, NVFP4 dynamic / static and MXFP8 (cast + skinny at
#            M = 16, cast + mixed-input at M = 4096; K = N = 3072), the numbers docs/host-path.md
#            quotes (12.4 / 13.3 us NVFP4, 8.4 / 9.8 us MXFP8 before)
#   host     dq-kernels bench host --formats bf16 nvfp4 (x bf16 F.linear at M = 16 and 4096)
#   quant    dq-kernels bench quant --formats nvfp4 nvfp4_static (this tree only; the default shapes)
set -uo pipefail
out=${OUT:-$PWD/h100-out}; mkdir -p "$out"
base=${BASE:-aebbccd}
base_lib=/tmp/s11h2-base.so
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export CUDA_MODULE_LOADING=LAZY
steps=${*:-build base tests compare host quant}
for step in $steps; do
  start=$(date +%s)
  case $step in
    build) OUT=$out bash benchmarks/h100.sh build
           [ -f dq_kernels/libdq_kernels_native.so ] || { echo "no library: see $out/build.log"; exit 1; } ;;
    base)
      src=/tmp/s11h2-base-src; rm -rf "$src"; mkdir -p "$src/generated"
      if git rev-parse -q --verify "$base^{commit}" >/dev/null 2>&1; then git archive "$base" csrc | tar -x -C "$src"
      elif [ -d .baseline/csrc ]; then cp -r .baseline/csrc "$src/"
      else echo "no baseline csrc (no git commit $base, no .baseline/csrc): compare runs this tree only"; continue
      fi
      printf '#pragma once\n#define DQ_KERNELS_VERSION "base"\n#define DQ_BUILD_CONFIG_JSON R"json("archs": ["90a"], "families": {"cast": ["90a"]}, "skipped": [])json"\n' \
        >"$src/generated/dq_build_config.h"
      flags="-std=c++17 -O3 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -Xcompiler -fPIC -I$src/csrc -I$src/generated"
      for f in cast.cu dequantize.cu library.cpp; do nvcc $flags -c "$src/csrc/$f" -o "$src/$f.o" & done; wait
      nvcc -shared "$src"/*.o -o "$base_lib" -cudart static && echo "built $base_lib" || echo "BASE BUILD FAILED" ;;
    tests)
      timeout 540 python3 -m pytest python_tests/test_cast.py python_tests/test_skinny_linear.py python_tests/test_native.py \
        -m gpu -q -p no:cacheprovider -rs >"$out/s11h2-tests.log" 2>&1; echo "tests rc=$?"; tail -15 "$out/s11h2-tests.log" ;;
    compare)
      BASE_LIB=$base_lib JSON="$out/s11h2-compare.json" timeout 540 python3 - 2>&1 <<'EOF' | tee "$out/s11h2-compare.log"
import ctypes, json, os

import torch

from dq_kernels import formats, native
from dq_kernels.bench import timing
from dq_kernels.bench.host import host_us

dev = torch.device("cuda", 0)
BF16, F16 = 1, 2  # DQ_BFLOAT16, DQ_FLOAT16
libs = {"new": native._library().lib}
if os.path.exists(os.environ["BASE_LIB"]):
    libs["base"] = ctypes.CDLL(os.environ["BASE_LIB"])
    for name in ("dq_quantize_nvfp4", "dq_quantize_dequantize_nvfp4"):  # the same signatures before and after
        getattr(libs["base"], name).argtypes = getattr(libs["new"], name).argtypes
else:
    print("no baseline library: this tree only")
rows = []


def checked(fn, *args):
    """A call of the C entry point fn(*args, stream) raising on a nonzero code."""
    stream = native.current_raw_stream(dev.index)

    def call():
        code = fn(*args, stream)
        assert code == 0, (fn.__name__, code)
    return call


def nvfp4_cast(lib, x, ts, decoded):
    """(call, outputs) of lib's NVFP4 cast of x into fresh outputs; ts None: the dynamic tensor scale."""
    m, k = x.shape
    ts_out = torch.empty((), device=dev)
    scratch = torch.empty(4096, dtype=torch.uint8, device=dev)  # DQ_NVFP4_CAST_SCRATCH_BYTES (base: 4 used)
    ts_ptr = None if ts is None else ts.data_ptr()
    if decoded:
        values = torch.empty(m, k, dtype=torch.float16, device=dev)
        call = checked(lib.dq_quantize_dequantize_nvfp4, x.data_ptr(), BF16, k, m, k, ts_ptr, values.data_ptr(),
                       ts_out.data_ptr(), scratch.data_ptr())
        return call, (values.view(torch.int16), ts_out, scratch)
    q = torch.empty(m, k // 2, dtype=torch.uint8, device=dev)
    s = torch.empty(formats.NVFP4.scale_shape(m, k), dtype=torch.uint8, device=dev)
    call = checked(lib.dq_quantize_nvfp4, x.data_ptr(), BF16, k, m, k, ts_ptr, q.data_ptr(), s.data_ptr(),
                   ts_out.data_ptr(), scratch.data_ptr())
    return call, (q, s, ts_out, scratch)


def same(a, b):
    return all(torch.equal(u, v) or (u.dim() == 0 and bool(u.isnan() and v.isnan())) for u, v in zip(a[:-1], b[:-1]))


# 1. GPU time and bit identity of the dynamic casts, baseline vs this tree
shapes = [(1, 3072), (16, 3072), (16, 12288)] + [(m, k) for m in (4096, 4608, 16384) for k in (3072, 12288, 15360)]
for m, k in shapes:
    torch.manual_seed(m + k)
    x = torch.randn(m, k, device=dev).to(torch.bfloat16)
    special = x.clone()
    special[m // 2, 5] = float("inf")
    special[m - 1, :16] = float("nan")
    for decoded in (False, True):
        row = {"M": m, "K": k, "cast": "quantize_dequantize_nvfp4" if decoded else "quantize_nvfp4"}
        results = {}
        for name, lib in libs.items():
            call, outputs = nvfp4_cast(lib, x, None, decoded)
            row[f"{name}_us"] = timing.median_us(call)
            call()
            results[name] = [outputs]
            for data in (special, torch.zeros_like(x)):
                call, outputs = nvfp4_cast(lib, data, None, decoded)
                call()
                results[name].append(outputs)
        torch.cuda.synchronize()
        if "base" in results:
            row["bit_identical"] = all(same(a, b) for a, b in zip(results["base"], results["new"]))
            row["new_over_base"] = row["new_us"] / row["base_us"]
        rows.append(row)
        print(row, flush=True)

# 2. host time of the bare C calls of the casts (dynamic and given tensor scale)
given = torch.tensor(0.01, device=dev)
for m, k in ((16, 3072), (4096, 3072)):
    x = torch.randn(m, k, device=dev).to(torch.bfloat16)
    for name, lib in libs.items():
        for ts in (None, given):
            for decoded in (False, True):
                call, _ = nvfp4_cast(lib, x, ts, decoded)
                row = {"host": f"{name} {'quantize_dequantize_nvfp4' if decoded else 'quantize_nvfp4'} "
                               f"{'dynamic' if ts is None else 'static'}", "M": m, "K": k, "us": host_us(call, dev)}
                rows.append(row)
                print(row, flush=True)

# 3. host time of this tree's bare one-call Linear (K = N = 3072, bf16 bias), and its GPU time
k = n = 3072
w = torch.randn(n, k, device=dev) * 0.05
bias = torch.randn(n, device=dev).to(torch.bfloat16)
nv_q, nv_s, nv_ts = formats.quantize_nvfp4(w)
nv_ts = nv_ts.reshape(())
mx_q, mx_s = formats.quantize_mxfp8(w)
lib = libs["new"]
for m, kernel in ((16, "skinny"), (4096, "mixed")):
    x = torch.randn(m, k, device=dev).to(torch.bfloat16)
    code = native.SM90_LINEAR_KERNELS[kernel]
    cases = {}
    for label, ts in (("nvfp4 dynamic", None), ("nvfp4 static", given)):
        workspace = native.stream_workspace(native._linear_workspace_bytes(dev.index, "nvfp4", kernel, m, n, k), dev,
                                        native.current_raw_stream(dev.index))
        out = torch.empty(m, n, dtype=torch.bfloat16, device=dev)
        cases[label] = (checked(lib.dq_sm90_nvfp4_linear, x.data_ptr(), BF16, k, nv_q.data_ptr(), nv_s.data_ptr(),
                                nv_ts.data_ptr(), None if ts is None else ts.data_ptr(), bias.data_ptr(), BF16,
                                out.data_ptr(), m, n, k, code, workspace.data_ptr(), workspace.numel()), out,
                        lambda out=out, ts=ts: native.sm90_nvfp4_linear(x, nv_q, nv_s, nv_ts, ts, bias, out, kernel),
                        workspace)
    workspace = native.stream_workspace(native._linear_workspace_bytes(dev.index, "mxfp8", kernel, m, n, k), dev,
                                        native.current_raw_stream(dev.index))
    out = torch.empty(m, n, dtype=torch.bfloat16, device=dev)
    cases["mxfp8"] = (checked(lib.dq_sm90_mxfp8_linear, x.data_ptr(), BF16, k, mx_q.data_ptr(), mx_s.data_ptr(),
                              bias.data_ptr(), BF16, out.data_ptr(), m, n, k, native.SCALINGS["rceil"], code,
                              workspace.data_ptr(), workspace.numel()), out,
                      lambda out=out: native.sm90_mxfp8_linear(x, mx_q, mx_s, bias, out, "rceil", kernel), workspace)
    for label, (bare, out, wrapped, _) in cases.items():
        wrapped()  # the checked wrapper, then the bare call into the same output: the same bits
        expected = out.clone()
        bare()
        torch.cuda.synchronize()
        row = {"linear": label, "kernel": kernel, "M": m, "K": k, "N": n, "bare_equals_wrapper": torch.equal(out, expected),
               "bare_host_us": host_us(bare, dev), "gpu_us": timing.median_us(bare)}
        rows.append(row)
        print(row, flush=True)

with open(os.environ["JSON"], "w") as f:
    json.dump({"device": torch.cuda.get_device_name(dev), "gpu_timing": timing.METHOD,
               "host_timing": "bench.host.host_us: calls behind a GPU spin, median of rounds",
               "rows": rows}, f, indent=1)
EOF
      echo "compare rc=${PIPESTATUS[0]}" ;;
    host) python3 -m dq_kernels bench host --formats bf16 nvfp4 --json "$out/s11h2-host.json" >"$out/s11h2-host.log" 2>&1
          echo "host rc=$?"; tail -8 "$out/s11h2-host.log" ;;
    quant) timeout 540 python3 -m dq_kernels bench quant --formats nvfp4 nvfp4_static --json "$out/s11h2-quant.json" \
             >"$out/s11h2-quant.log" 2>&1; echo "quant rc=$?"; tail -25 "$out/s11h2-quant.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - start )) s"
done
