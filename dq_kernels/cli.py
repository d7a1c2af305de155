"""The ``dq-kernels`` command line (also ``python -m dq_kernels``).

    dq-kernels info                      the GPU, versions, native library and backends
    dq-kernels bench gemm [options]      GEMM time and error for every format x backend
    dq-kernels bench quant [options]     activation-cast bandwidth against torchao's casts
    dq-kernels bench model MODEL [...]   diffusion-transformer steps end to end per format
    dq-kernels bench host [options]      host time per eager quantized Linear call against bf16
    dq-kernels selftest [--quick]        every backend here against an fp64 oracle (run this first)

Backends of plugins (docs/own-backend.md) are seen by every command: those of the installed
packages' entry points (group ``dq_kernels.backends``), loaded first, and ``--plugin MODULE``
before the command (``dq-kernels --plugin my_package.my_backend bench gemm --backends mine``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from typing import Sequence

import torch

import dq_kernels
import dq_kernels.backends
import dq_kernels.native
import dq_kernels.plugins
from dq_kernels.bench import gemm, host, model, quant, report, selftest, timing
from dq_kernels.bench.shapes import CPU_MAX_K, CPU_MAX_M, CPU_MAX_N, PRESETS, SHAPE_FORM, Shape, parse_shape

OUT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CPU_SHAPE_LIMIT = f"{CPU_MAX_M}x{CPU_MAX_K}x{CPU_MAX_N}"
NO_CUDA_LINE = (
    "No CUDA device: nothing can be timed, so this checks numerics instead, on the CPU, with each "
    f"shape shrunk to at most {CPU_SHAPE_LIMIT} (MxKxN)."
)
NO_CUDA_TIMING = f"none: no CUDA device, numerics check on the CPU with shapes shrunk to at most {CPU_SHAPE_LIMIT}"

GEMM_EPILOG = f"""\
Shapes are MxKxN for out[M, N] = a[M, K] @ b[N, K].T (b stored like an nn.Linear weight).
Presets: {", ".join(f"{name} ({len(shapes)} shapes)" for name, shapes in PRESETS.items())}.

On a CUDA device every shape also runs the bf16 cuBLAS (torch.mm) and fp8 tensor-wise cuBLAS
(torch._scaled_mm) baselines. Operands are random normal (seeded) and quantized once, outside the
timed region. Ops: "mm" times the mm op on the quantized operands (output: --out-dtype); "linear"
times what a quantized Linear runs in a model, the linear op on the bf16 activation (its cast
included, the backend as mm_backend, the cast's backend auto, bf16 output; for nvfp4_w4a16 the
weight-only mm itself). tmp MiB: the temporary buffers of backends that report them (decode_cublas).
{textwrap.fill(f"Timing: {timing.METHOD}.", 100)}
rel err is ||out - ref|| / ||ref|| in float64: a format row against the "reference" backend on the
same quantized operands (float32 output, so the floor is the rounding to --out-dtype: about
1.6e-3 for bf16), a baseline against the float64 product of the bf16 inputs.

Without a CUDA device the command checks numerics instead: every shape shrunk to at most
{CPU_SHAPE_LIMIT}, each format x backend run on the CPU, rel err only; --plot then shows the
relative error instead of the speedup."""


def _shape_arg(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _backend_arg(name: str) -> str:
    names = [*dq_kernels.backends.backend_names(), gemm.AUTO]
    if name not in names:
        raise argparse.ArgumentTypeError(f"unknown backend {name!r} (valid: {', '.join(names)})")
    return name


def _add_gemm_parser(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "gemm",
        help="time every format x backend on GEMM shapes against cuBLAS",
        description="Time MXFP8 and NVFP4 GEMMs for every backend against bf16 and fp8 cuBLAS.",
        epilog=GEMM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=list(PRESETS), default="flux", help="named shape set (default: flux)")
    p.add_argument("--shape", type=_shape_arg, nargs="+", action="extend", metavar="MxKxN",
                   help=f"shapes to run instead of the preset ({SHAPE_FORM})")
    p.add_argument("--formats", choices=gemm.FORMATS, nargs="+", action="extend",
                   help="formats to run (default: all): nvfp4_w4a16 is the NVFP4 weight with the "
                        "activation left in bf16 (nvfp4_weight_only_mm)")
    p.add_argument("--backends", type=_backend_arg, nargs="+", action="extend", metavar="NAME",
                   help="backends to run (default: every available backend supporting the format; "
                        "see `dq-kernels info`); auto: the backend the ops choose for each shape")
    p.add_argument("--ops", choices=gemm.OPS, nargs="+", action="extend",
                   help="ops to run (default: both): mm on quantized operands, linear on the bf16 activation "
                        "(cast included)")
    p.add_argument("--json", metavar="PATH", help="write the rows and a header (device, versions, date) as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of the speedup vs bf16 cuBLAS per shape "
                                                    "(of the relative error without a CUDA device)")
    p.add_argument("--out-dtype", choices=list(OUT_DTYPES), default="bf16", help="output dtype (default: bf16)")
    p.set_defaults(run=_bench_gemm)


def _mk_arg(text: str) -> tuple[int, int]:
    try:
        return quant.parse_mk(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_quant_parser(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "quant",
        help="time the activation casts (quantize ops) against torchao's casts",
        description="Time the MXFP8 and NVFP4 casts of bf16 activations: effective bandwidth and speedup "
                    "over torchao's eager and compiled casts (needs a CUDA device).",
        epilog=textwrap.fill(f"Timing: {timing.METHOD}. " + " ".join(quant.__doc__.split("\n\n")[-1].split()), 100),
    )
    p.add_argument("--shape", type=_mk_arg, nargs="+", action="extend", metavar="MxK",
                   help="input shapes (default: M in 4096 4608 16384 x K in 3072 12288 15360)")
    p.add_argument("--formats", choices=quant.CASES, nargs="+", action="extend",
                   help="cases to run (default: all): nvfp4 has a dynamic tensor scale, nvfp4_static a given one")
    p.add_argument("--json", metavar="PATH", help="write the rows and a header (device, versions, date) as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of the effective bandwidth")
    p.set_defaults(run=_bench_quant)


def _bench_quant(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("No CUDA device: there is nothing to time. (The cast kernels' numerics are tested on the CPU "
              "by pytest under TRITON_INTERPRET=1.)")
        return 0
    rows = quant.run(args.shape or list(quant.DEFAULT_SHAPES), args.formats or list(quant.CASES))
    print(quant.table(rows))
    header = report.json_header(torch.cuda.get_device_name(), args.command_line, timing.METHOD)
    if args.json:
        report.write_json(args.json, {**header, "rows": [row.to_json() for row in rows]})
        print(f"wrote {args.json}")
    if args.plot:
        quant.plot(rows, args.plot, header["device"], header["date"])
        print(f"wrote {args.plot}")
    return 0


def _resolution_arg(text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"bad resolution {text!r}: expected HxW (images) or FxHxW (video frames)")
    return tuple(int(p) for p in parts)


def _add_model_parser(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "model",
        help="diffusion-transformer denoising steps end to end: latency, memory, error vs bf16",
        description="Time a diffusion transformer's denoising steps for each format, backend and compile mode.",
        epilog=textwrap.fill(" ".join(model.__doc__.split("\n\n")[1].split()), 100),
    )
    p.add_argument("models", nargs="+", choices=list(model.MODELS), metavar="MODEL",
                   help=f"one or more of: {', '.join(model.MODELS)}")
    p.add_argument("--checkpoint", metavar="PATH", help="load the transformer (for --images also the VAE and any "
                                                        "text encoders) from this diffusers folder instead of random "
                                                        "weights (one model only; with --tiny: a checkpoint of the "
                                                        "tiny config)")
    p.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="batch sizes, >= 1 (default: 1)")
    p.add_argument("--resolution", type=_resolution_arg, metavar="HxW",
                   help="HxW, or FxHxW for video (default: each model's, e.g. 1024x1024 for flux); height and "
                        "width multiples of 16 (flux, qwenimage) or 32 (ltx2), frames 8k + 1")
    p.add_argument("--steps", type=int, default=8,
                   help=f"denoising steps per configuration, the first {model.WARMUP_STEPS} untimed (default: 8)")
    p.add_argument("--formats", choices=model.FORMATS, nargs="+", default=list(model.FORMATS),
                   help="formats (default: all that run here: fp8_rowwise needs a GPU of compute capability "
                        ">= 8.9; bf16 always runs: it is the reference)")
    p.add_argument("--backends", type=_backend_arg, nargs="+", default=list(model.BACKENDS), metavar="NAME",
                   help="backends for mxfp8 and nvfp4: auto or a registered name, yours included "
                        "(default: auto torchao)")
    p.add_argument("--compile", choices=model.COMPILE_MODES, nargs="+", default=["none"],
                   help="compile modes (default: none; regional-cudagraphs: one CUDA graph per denoising step, see below)")
    p.add_argument("--tiny", action="store_true", help="1 + 1 layer models: a smoke test of the whole path, "
                                                      "also on a machine without a GPU (times mean nothing)")
    p.add_argument("--json", metavar="PATH", help="write the rows and a header (device, versions, date) as JSON")
    p.add_argument("--plot", metavar="PATH", help="write PNG charts of step latency (PATH) and weight memory "
                                                    "(PATH with -memory before the suffix)")
    p.add_argument("--cp", type=_positive_int, default=1, metavar="N",
                   help="also run each configuration with diffusers' context parallelism of degree N (one "
                        "process per GPU: launch with torchrun --nproc-per-node N -m dq_kernels bench model ...; "
                        "default: 1, off)")
    p.add_argument("--cp-kind", choices=model.CP_KINDS, default="ulysses",
                   help="how attention is split: ulysses (all-to-all over heads) or ring (CUDA only; default: ulysses)")
    p.add_argument("--images", type=_positive_int, default=0, metavar="N",
                   help="also make N images per configuration (in the first batch size; not with --cp) and report "
                        "their LPIPS (AlexNet, needs the lpips package) and PSNR against bf16's (ltx2: every frame "
                        "of N videos); needs --checkpoint with a vae/ and --prompts; see docs/benchmarks.md")
    p.add_argument("--prompts", metavar="FILE", help="prompts for --images, one per line, cycled; without the "
                                                      "checkpoint's text encoders each prompt's conditioning is seeded "
                                                      "random (said in the output)")
    p.add_argument("--save-images", metavar="DIR", help="write the --images as PNGs "
                                                         "(MODEL-FORMAT[-BACKEND]-COMPILE-NNN.png)")
    p.set_defaults(run=_bench_model)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _bench_model(args: argparse.Namespace) -> int:
    try:
        model.validate(args.models, args.resolution, args.steps, args.compile, args.tiny, args.checkpoint, args.batch,
                       args.cp, args.cp_kind, args.images, args.prompts, args.save_images)
        compile_cast = dq_kernels.ops.compile_cast()  # how compiled rows trace a quantized Linear
    except ValueError as err:
        print(err)
        return 2
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    timing_method = ("wall clock around each denoising step, CUDA synchronized before and after; median of the "
                     f"steps after the first {model.WARMUP_STEPS}" + ("; context-parallel rows: the slowest rank's"
                                                                      " median" if args.cp > 1 else ""))
    header = {**report.json_header(device, args.command_line, timing_method), "compile_cast": compile_cast}

    def write_json(rows):  # after every row, so that a crash keeps the finished ones
        report.write_json(args.json, {**header, "rows": [row.to_json() for row in rows]})

    rank = int(os.environ.get("RANK", "0")) if args.cp > 1 else 0
    rows = model.run(args.models, args.batch, args.resolution, args.steps, args.formats, args.backends,
                     args.compile, tiny=args.tiny, checkpoint=args.checkpoint,
                     on_row=write_json if args.json else None, cp=args.cp, cp_kind=args.cp_kind,
                     images=args.images, prompts=args.prompts, save_images=args.save_images)
    if args.cp > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:  # rank 0 prints and writes the rows
        return 0
    print(model.table(rows))
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        model.plot(rows, args.plot, device, header["date"])
        print(f"wrote {args.plot} and its -memory chart")
    return 0


def _mkn_arg(text: str) -> tuple[int, int, int]:
    shape = _shape_arg(text)
    return shape.M, shape.K, shape.N


def _add_host_parser(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "host",
        help="host time per eager quantized Linear call, against bf16 and torchao fp8 row-wise",
        description="Time the host side of one eager nn.Linear call per format (what eager diffusion pays "
                    "before any kernel runs).",
        epilog=textwrap.fill(" ".join(host.__doc__.split("\n\n")[1].split()), 100),
    )
    p.add_argument("--shape", type=_mkn_arg, nargs="+", action="extend", metavar="MxKxN",
                   help="Linear shapes: input [1, M, K], weight [N, K] (default: 16x3072x3072 4096x3072x3072; "
                        "16x256x256 without a CUDA device)")
    p.add_argument("--formats", choices=host.FORMATS, nargs="+", default=list(host.FORMATS),
                   help="formats (default: all)")
    p.add_argument("--profile", choices=host.FORMATS, metavar="FORMAT",
                   help="also print the Python profile of this format's calls at the first shape")
    p.add_argument("--json", metavar="PATH", help="write the rows and a header (device, versions, date) as JSON")
    p.set_defaults(run=_bench_host)


def _bench_host(args: argparse.Namespace) -> int:
    if torch.cuda.is_available():
        device, device_name, shapes = torch.device("cuda", torch.cuda.current_device()), torch.cuda.get_device_name(), host.DEFAULT_SHAPES
    else:
        print("No CUDA device: the calls run on the CPU, their arithmetic included (the numbers say little "
              "about the host path).")
        device, device_name, shapes = torch.device("cpu"), "cpu", host.CPU_SHAPES
    rows, notes = host.run(args.shape or shapes, args.formats, device, args.profile)
    print(host.table(rows))
    for note in notes:
        print(note)
    if args.json:
        header = report.json_header(device_name, args.command_line, host.METHOD)
        report.write_json(args.json, {**header, "rows": [row.to_json() for row in rows]})
        print(f"wrote {args.json}")
    return 0


class _ImportPlugin(argparse.Action):
    """``--plugin MODULE``: import the module now, while parsing, so that the backends it registers
    are known to the options parsed after it (``--backends``)."""

    def __call__(self, parser, namespace, module, option_string=None):
        try:
            dq_kernels.plugins.import_plugin(module)
        except dq_kernels.plugins.PluginError as err:
            parser.error(f"{option_string} {module}: {err}")
        namespace.plugins = [*(namespace.plugins or []), module]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dq-kernels", description="MXFP8 and NVFP4 GEMM kernels: info and benchmarks.")
    parser.add_argument("--version", action="version", version=f"dq_kernels {dq_kernels.__version__}")
    parser.add_argument("--plugin", action=_ImportPlugin, metavar="MODULE", dest="plugins", default=[],
                        help="import this Python module first: a plugin that registers backends with "
                             "dq_kernels.register_backend (repeatable; before the command). Entry points of the "
                             f"group {dq_kernels.plugins.ENTRY_POINT_GROUP!r} load without it")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="show the GPU, versions, native library and backends",
                               description="Show the GPU, package versions, the native library and every backend.")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="benchmarks", description="Benchmarks.")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    _add_gemm_parser(benches)
    _add_quant_parser(benches)
    _add_model_parser(benches)
    _add_host_parser(benches)
    _add_selftest_parser(commands)
    return parser


def _bench_gemm(args: argparse.Namespace) -> int:
    formats = args.formats or list(gemm.FORMATS)
    shapes = args.shape or list(PRESETS[args.preset])
    pairs = gemm.select_backends(formats, args.backends)
    for name in args.backends or []:
        if all(backend != name for _, backend in pairs):
            print(f"note: backend {name!r} implements none of the requested formats ({', '.join(formats)})")
    if torch.cuda.is_available():
        device, device_name, timing_method = "cuda", torch.cuda.get_device_name(), timing.METHOD
    else:
        print(NO_CUDA_LINE)
        device, device_name, timing_method = "cpu", "cpu", NO_CUDA_TIMING
        shapes = [shape.shrunk() for shape in shapes]

    result = gemm.run(shapes, pairs, OUT_DTYPES[args.out_dtype], device, args.ops or list(gemm.OPS))
    print(gemm.table(result.rows))
    for skip in result.skipped:
        print(skip.note())

    header = report.json_header(device_name, args.command_line, timing_method)
    if args.json:
        report.write_json(args.json, {
            **header,
            "rows": [row.to_json() for row in result.rows],
            "shapes": [{"M": s.M, "K": s.K, "N": s.N, "label": s.label} for s in shapes],
            "skipped": [skip.to_json() for skip in result.skipped],
        })
        print(f"wrote {args.json}")
    if args.plot:
        gemm.plot(result.rows, args.plot, device_name, header["date"])
        print(f"wrote {args.plot}" + ("" if device == "cuda" else " (relative error: no timings without a CUDA device)"))
    return 0


def _gpu_description() -> str:
    if not torch.cuda.is_available():
        built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "torch built without CUDA"
        return f"no CUDA device ({built})"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()}, compute capability {major}.{minor}, CUDA {torch.version.cuda}"


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _info(args: argparse.Namespace) -> int:
    print(f"GPU: {_gpu_description()}")
    for name, version in report.package_versions().items():
        print(f"{name}: {version}")
    loaded, reason = dq_kernels.native.status()
    print(f"native library: {'loaded' if loaded else 'not loaded'} ({reason})")
    for key, value in (dq_kernels.native.build_info() or {}).items():
        print(f"  {key}: {_describe(value)}")
    if loaded:
        found = dq_kernels.native.cublaslt_found()
        print(f"  cuBLASLt (decode_cublas's one-call MXFP8 Linear): "
              f"{'found' if found else 'not found: that Linear runs as three steps from Python'}")
    chosen = dq_kernels.backends.env_backend()
    print(f"backend: {chosen} ({dq_kernels.backends.ENV_BACKEND}={os.environ.get(dq_kernels.backends.ENV_BACKEND, '')!r})")
    print()
    rows = [[s.name, "yes" if s.available else "no", " ".join(s.formats), s.reason or "-"]
            for s in dq_kernels.available_backends()]
    print(report.format_table(("backend", "available", "formats", "reason"), [rows]))
    backends = [dq_kernels.get_backend(name) for name in dq_kernels.backends.backend_names()]
    registered = [b.spec for b in backends if b in dq_kernels.backends.user_backends]
    if registered:
        auto = {False: "never chosen by auto", True: "auto after the built-ins", "first": "auto first"}
        print("registered (plugins): " + "; ".join(f"{spec.name} ({auto[spec.auto]})" for spec in registered))
    return 0


# ------------------------------------------------------------------------------------------------
# dq-kernels selftest
# ------------------------------------------------------------------------------------------------


def _add_selftest_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "selftest",
        help="check every backend on this machine against an fp64 oracle (run this first on a new GPU)",
        description="Check every available backend, for every op it implements, against an fp64 oracle "
                    "(GEMMs) and the reference (casts, bit for bit). Exits 1 if any check fails.",
        epilog=textwrap.fill(" ".join(selftest.__doc__.split("\n\n", 1)[1].split()), 100),
    )
    p.add_argument("--quick", action="store_true",
                   help="the small grid (automatic without a CUDA device: CPU and Triton interpreter)")
    p.add_argument("--backends", type=_backend_arg, nargs="+", action="extend", metavar="NAME",
                   help="check these backends only (default: every available one)")
    p.add_argument("--json", metavar="PATH", help="write every case and a header (device, versions, date) as JSON, "
                                                    "to attach to a bug report")
    p.set_defaults(run=_selftest)


def _selftest(args: argparse.Namespace) -> int:
    quick = args.quick or not torch.cuda.is_available()
    grid = selftest.QUICK_GRID if quick else selftest.GRID
    device = _gpu_description()
    print(f"dq-kernels selftest on {device}, {'quick' if quick else 'full'} grid: M {grid.ms}, N {grid.ns}, "
          f"K {grid.ks}", flush=True)
    cases = selftest.run(grid, args.backends, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.format_table(selftest.TABLE_HEADERS, [selftest.summary_rows(cases)]))
    for line in selftest.problems(cases):
        print(line)
    if args.json:
        header = report.json_header(device, args.command_line, "wall clock of one call after the checked one")
        report.write_json(args.json, {
            **header,
            "native": dq_kernels.native.status()[1],
            "build_info": dq_kernels.native.build_info(),
            "backends": {s.name: s.reason for s in dq_kernels.available_backends()},
            "grid": {"M": grid.ms, "N": grid.ns, "K": grid.ks},
            "cases": selftest.to_json(cases),
        })
        print(f"wrote {args.json}")
    bad = selftest.failed(cases)
    print("selftest: FAILED" if bad else "selftest: passed")
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dq-kernels``; ``argv`` without the program name (default: sys.argv[1:])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        dq_kernels.plugins.load_plugins()
    except dq_kernels.plugins.PluginError as err:
        print(f"dq-kernels: {err}\n(fix or uninstall the package that provides it)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.command_line = "dq-kernels " + shlex.join(argv)
    try:
        dq_kernels.backends.env_backend()
    except ValueError as err:  # a bad DQ_KERNELS_BACKEND: say so once, not as a traceback from every op
        print(f"dq-kernels: {err}", file=sys.stderr)
        return 2
    return args.run(args)
