"""Full-size FLUX.1-dev-shaped transformer (random weights) on dq_kernels: error vs bf16 and step time.

    python benchmarks/flux_transformer_check.py --formats mxfp8 nvfp4 [--compile] [--json PATH]

Builds diffusers' FluxTransformer2DModel with FLUX.1-dev's config on the GPU (the same seed for every
format, so the weights are the same), runs one forward at 1024x1024 (4096 image tokens, 512 text
tokens, batch 1) in bf16, then quantizes with the flux preset and runs it eager and, with --compile,
regionally compiled (compile_repeated_blocks(fullgraph=True)). Prints the relative error and cosine
vs the bf16 output, and the median step time. (The end-to-end benchmark proper is
`dq-kernels bench model`, a later issue.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

import dq_kernels as dq

FLUX_DEV = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))


def build_model():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**FLUX_DEV).to(torch.bfloat16)
    return model.eval()


def inputs():
    g = torch.Generator("cuda").manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)

    return dict(hidden_states=randn(1, 4096, 64), encoder_hidden_states=randn(1, 512, 4096),
                pooled_projections=randn(1, 768), timestep=torch.tensor([0.5], device="cuda"),
                img_ids=torch.zeros(4096, 3, device="cuda"), txt_ids=torch.zeros(512, 3, device="cuda"),
                guidance=torch.tensor([3.5], device="cuda"), return_dict=False)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a quantized weight subclass counts its inner tensors (qdata, scales)."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def step_ms(model, kwargs, steps=5) -> tuple[torch.Tensor, float]:
    out = model(**kwargs)[0]
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(**kwargs)[0]
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return out, statistics.median(times)


def compare(out, ref) -> tuple[float, float]:
    out, ref = out.double().flatten(), ref.double().flatten()
    return ((out - ref).norm() / ref.norm()).item(), torch.nn.functional.cosine_similarity(out, ref, dim=0).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["mxfp8", "nvfp4"], choices=["mxfp8", "nvfp4"])
    parser.add_argument("--compile", action="store_true", help="also run compile_repeated_blocks(fullgraph=True)")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    kwargs = inputs()
    rows = []
    with torch.inference_mode():
        model = build_model()
        ref, ms = step_ms(model, kwargs)
        weights = sum(tensor_bytes(t) for t in model.state_dict().values())
        rows.append(dict(format="bf16", compile="none", step_ms=ms, rel_err=0.0, cosine=1.0, weights_gib=weights / 2**30))
        print(rows[-1], flush=True)
        del model
        for fmt in args.formats:
            model = build_model()
            dq.diffusers.quantize(model, fmt, preset="flux")
            weights = sum(tensor_bytes(t) for t in model.state_dict().values())
            modes = ["none", "regional"] if args.compile else ["none"]
            for mode in modes:
                if mode == "regional":
                    start = time.perf_counter()
                    model.compile_repeated_blocks(fullgraph=True)
                    model(**kwargs)
                    print(f"{fmt}: regional compile + first step {time.perf_counter() - start:.0f} s", flush=True)
                out, ms = step_ms(model, kwargs)
                err, cos = compare(out, ref)
                rows.append(dict(format=fmt, compile=mode, step_ms=ms, rel_err=err, cosine=cos, weights_gib=weights / 2**30,
                                 backend=dq.backends.select(f"{fmt}_mm", torch.device("cuda"), 4096, 3072, 3072).spec.name))
                print(rows[-1], flush=True)
            del model
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dq_kernels": dq.__version__,
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
