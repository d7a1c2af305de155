"""``dq-kernels bench model``: diffusion-transformer denoising steps end to end, per format, backend
and compile mode.

For each model and batch: the real-size transformer is built from its published config with seeded
random weights (the same weights for every configuration; ``--checkpoint`` loads real ones
instead), fed inputs whose token counts follow from the resolution, and driven through a short
flow-matching denoising loop (Euler steps from sigma 1 to 0; classifier-free guidance as the model's
pipeline does it: QwenImage's true CFG runs two forwards per step, LTX-2 doubles the batch; for
LTX-2 only the video latent is stepped, the audio tokens are fixed inputs). Every
configuration starts from the same noise and conditioning, so the final latents are comparable:
``rel_err`` and ``cosine`` compare each with the bf16 run in the first compile mode asked for (eager
by default), after all steps, so drift shows.

Configurations: ``bf16`` (the baseline), ``mxfp8`` and ``nvfp4`` (our weight subclasses with the
model's preset, on ``auto`` or on ``torchao``'s stock kernels), and ``fp8_rowwise`` (TorchAO's
``Float8DynamicActivationFloat8WeightConfig`` with per-row scales, the best 8-bit option on Hopper
today, same layer selection). Compile modes: ``none``; ``regional`` (``compile_repeated_blocks``,
fullgraph); ``regional-cudagraphs`` (the same, with each whole denoising step captured in one CUDA
graph after the warm-up and replayed). Capture refuses host-to-device copies, so the step feeds each
forward what its pipeline feeds it and no more: LTX-2 gets its RoPE coordinates computed once before
the loop (``ModelSpec.precompute``) and QwenImage no text mask (every prompt token is valid); given
those, none of the three forwards copies a host value (the copies they would make otherwise:
docs/benchmarks.md, "CUDA graphs").

Per configuration: step latency (median over the steps after ``WARMUP_STEPS``), speedup against bf16
in the same compile mode, peak GPU memory, transformer weight memory, error against bf16, and
compile time (the warm-up steps' time beyond the median). Without a CUDA device only ``--tiny``
runs (1 + 1 layers, for a smoke test of the whole path on the CPU; nothing is timed meaningfully).

Context parallelism (``--cp N``, launched with ``torchrun --nproc-per-node N``): each process builds
the whole model on its own GPU (nccl; gloo on the CPU), every configuration runs first on one GPU
(cp 1) and then with diffusers' context parallelism of degree N (Ulysses or ring), which splits the
sequence across the processes; CP rows add the error against the same configuration's one-GPU
latent, the slowest rank's step time and each rank's peak memory. Rank 0 prints and writes the rows.

Image quality (``--images N --prompts FILE`` with ``--checkpoint``): each configuration's model also
makes N images, decoded by the checkpoint's VAE, and its row reports their LPIPS and PSNR against
bf16's (``ImageRun``; prompts and decoding in bench/images.py, metrics in bench/quality.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from tqdm import tqdm

from dq_kernels import diffusers as dqd
from dq_kernels._quiet import DIFFUSERS_IMPORT_NOISE, quiet_loggers
from dq_kernels.bench import images as bench_images
from dq_kernels.bench import quality, report

FORMATS = ("bf16", "mxfp8", "nvfp4", "fp8_rowwise")
BACKENDS = ("auto", "torchao")
COMPILE_MODES = ("none", "regional", "regional-cudagraphs")
CP_KINDS = ("ulysses", "ring")
# Ring attention merges per-chunk outputs with their log-sum-exp; diffusers 0.42's native backend
# refuses return_lse=True, and its backends that return it are CUDA-only (_native_flash used here).
RING_ATTENTION_BACKEND = "_native_flash"
WARMUP_STEPS = 2
GUIDANCE = 4.0
SEED = 0


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One diffusers transformer: how to build it and feed it.

    config / tiny_config: constructor arguments (published checkpoint / 1 + 1 layers for smoke tests).
    inputs(batch, resolution, tiny, device, generator) -> (forward kwargs without the latent, latent
        [batch, tokens, channels]); resolution is (height, width) or (frames, height, width).
    cfg: "none", "two_forwards" (a second forward with the negative conditioning, QwenImage's true
        CFG) or "double_batch" (conditional and unconditional halves in one forward, LTX-2).
    precompute(model, kwargs, latent) -> forward arguments computed once per run from the built
        model, which the forward would otherwise compute from host values on every call (a
        host-to-device copy, which CUDA graph capture refuses), or None.
    resolution_rule: per resolution entry (multiple, offset): entry - offset must be a positive
        multiple of ``multiple`` (offset 1 for video frames, 8k + 1), so that the latent grid has no
        empty or truncated dimension.
    """

    name: str
    class_name: str
    config: dict
    tiny_config: dict
    default_resolution: tuple[int, ...]
    tiny_resolution: tuple[int, ...]
    inputs: Callable
    cfg: str = "none"
    negative_keys: tuple[str, ...] = ()  # conditioning replaced by zeros for the unconditional pass
    time_kwargs: Callable = None  # (sigma, latent, kwargs) -> the timestep arguments; default below
    precompute: Callable = None
    resolution_rule: tuple[tuple[int, int], ...] = ((16, 0), (16, 0))

    def resolution_error(self, resolution: tuple[int, ...]) -> str | None:
        """Why ``resolution`` makes no input for this model (see resolution_rule), or None."""
        names = ("frames", "height", "width")[-len(self.default_resolution):]
        form = "x".join(n[0].upper() for n in names)
        if len(resolution) != len(names):
            return f"{self.name} takes a resolution {form} ({', '.join(names)}), got {'x'.join(map(str, resolution))}"
        for name, value, (multiple, offset) in zip(names, resolution, self.resolution_rule):
            if value <= offset or (value - offset) % multiple:
                rule = f"{multiple}k + {offset} for some k >= 1" if offset else f"a positive multiple of {multiple}"
                return f"{self.name} needs the {name} to be {rule}, got {value}"
        return None


def _timestep(sigma: float, x: torch.Tensor, kwargs: dict) -> dict:
    """timestep = sigma for each batch element (FLUX and QwenImage scale it by 1000 inside)."""
    return {"timestep": torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)}


def _randn(g, device, *shape):
    return torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16)


def _flux_inputs(batch, resolution, tiny, device, g):
    """FLUX.1-dev: 8x VAE, 2x2 patches packed to 64 channels; 512 T5 tokens (8 in --tiny)."""
    height, width = resolution
    h, w = height // 16, width // 16
    channels, text, text_dim, pooled = (32, 8, 64, 64) if tiny else (64, 512, 4096, 768)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij"), -1)
    kwargs = dict(
        encoder_hidden_states=_randn(g, device, batch, text, text_dim),
        pooled_projections=_randn(g, device, batch, pooled),
        img_ids=ids.reshape(h * w, 3).to(device),
        txt_ids=torch.zeros(text, 3, device=device),
        guidance=torch.full((batch,), 3.5, device=device),
    )
    return kwargs, _randn(g, device, batch, h * w, channels)


def _qwenimage_inputs(batch, resolution, tiny, device, g):
    """QwenImage: 8x VAE, 16 latent channels packed 2x2 to 64; a 128-token prompt (8 in --tiny).
    No text mask: every token is valid, and QwenImagePipeline passes None for an all-ones mask (a
    mask would cost a host-to-device copy per forward, in compute_text_seq_len_from_mask)."""
    height, width = resolution
    h, w = height // 16, width // 16
    text, text_dim = (8, 64) if tiny else (128, 3584)
    kwargs = dict(
        encoder_hidden_states=_randn(g, device, batch, text, text_dim),
        img_shapes=[(1, h, w)] * batch,
    )
    return kwargs, _randn(g, device, batch, h * w, 64)


def _ltx2_inputs(batch, resolution, tiny, device, g):
    """LTX-2: 32x spatial and 8x temporal VAE, 128 latent channels, patch 1; audio at 25 latent
    frames per second of video at 24 fps; 1024 text tokens per stream (8 in --tiny)."""
    frames, height, width = resolution
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    audio_frames = round(frames / 24 * 25)
    channels, text, text_dim = (32, 8, 64) if tiny else (128, 1024, 3840)
    kwargs = dict(
        audio_hidden_states=_randn(g, device, batch, audio_frames, channels),
        encoder_hidden_states=_randn(g, device, batch, text, text_dim),
        audio_encoder_hidden_states=_randn(g, device, batch, text, text_dim),
        num_frames=f,
        height=h,
        width=w,
        audio_num_frames=audio_frames,
    )
    return kwargs, _randn(g, device, batch, f * h * w, channels)


def _ltx2_coords(model, kwargs: dict, latent: torch.Tensor) -> dict:
    """LTX-2's RoPE coordinates for ``latent``'s batch, computed once as LTX2Pipeline does: the
    forward's own prepare_video_coords copies the patch size and VAE scale factors to the device on
    every call. video_coords: float32 [batch, 3, video tokens, 2]; audio_coords: float32 [batch, 1,
    audio tokens, 2] (start and end of each patch; for "double_batch" CFG _velocity doubles them)."""
    batch, device = latent.shape[0], latent.device
    return {"video_coords": model.rope.prepare_video_coords(batch, kwargs["num_frames"], kwargs["height"],
                                                            kwargs["width"], device),
            "audio_coords": model.audio_rope.prepare_audio_coords(batch, kwargs["audio_num_frames"], device)}


def _ltx2_timesteps(sigma: float, x: torch.Tensor, kwargs: dict) -> dict:
    """LTX-2 takes per-token timesteps on a 0..1000 scale, for the video and the audio tokens."""
    audio = kwargs["audio_hidden_states"].shape[1]
    return {"timestep": torch.full(x.shape[:2], 1000 * sigma, device=x.device),
            "audio_timestep": torch.full((x.shape[0], audio), 1000 * sigma, device=x.device)}


MODELS: dict[str, ModelSpec] = {
    "flux": ModelSpec(
        "flux",
        "FluxTransformer2DModel",
        # black-forest-labs/FLUX.1-dev transformer/config.json
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        tiny_config=dict(patch_size=1, in_channels=32, num_layers=1, num_single_layers=1, attention_head_dim=32,
                         num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64,
                         guidance_embeds=True, axes_dims_rope=(8, 12, 12)),
        default_resolution=(1024, 1024),
        tiny_resolution=(64, 64),
        inputs=_flux_inputs,
    ),
    "qwenimage": ModelSpec(
        "qwenimage",
        "QwenImageTransformer2DModel",
        # Qwen/Qwen-Image transformer/config.json (as copied in third-party code; the hub file itself
        # was not read): 60 layers, 24 heads of 128, 3584-wide text states
        config=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                    axes_dims_rope=(16, 56, 56)),
        tiny_config=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=32,
                         num_attention_heads=2, joint_attention_dim=64, axes_dims_rope=(8, 12, 12)),
        default_resolution=(1024, 1024),
        tiny_resolution=(64, 64),
        inputs=_qwenimage_inputs,
        cfg="two_forwards",
        negative_keys=("encoder_hidden_states",),
    ),
    "ltx2": ModelSpec(
        "ltx2",
        "LTX2VideoTransformer3DModel",
        # diffusers' conversion preset for Lightricks/LTX-2 (the hub config.json was not read): 48
        # layers; video 32 heads of 128, audio 32 heads of 64; 3840-wide captions; split RoPE
        config=dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                    attention_head_dim=128, cross_attention_dim=4096, audio_in_channels=128,
                    audio_out_channels=128, audio_num_attention_heads=32, audio_attention_head_dim=64,
                    audio_cross_attention_dim=2048, num_layers=48, caption_channels=3840, rope_type="split"),
        tiny_config=dict(in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32,
                         cross_attention_dim=64, audio_in_channels=32, audio_out_channels=32,
                         audio_num_attention_heads=2, audio_attention_head_dim=32, audio_cross_attention_dim=64,
                         num_layers=1, caption_channels=64),
        default_resolution=(121, 512, 768),
        tiny_resolution=(9, 64, 64),
        inputs=_ltx2_inputs,
        cfg="double_batch",
        negative_keys=("encoder_hidden_states", "audio_encoder_hidden_states"),
        time_kwargs=_ltx2_timesteps,
        resolution_rule=((8, 1), (32, 0), (32, 0)),
        precompute=_ltx2_coords,
    ),
}


def build(spec: ModelSpec, tiny: bool, device: str, checkpoint: str | None = None) -> torch.nn.Module:
    """The bf16 transformer in eval mode on ``device``: from ``checkpoint`` (a diffusers folder, or
    one holding a ``transformer`` subfolder) or with seeded random weights (the same every call)."""
    import diffusers

    with quiet_loggers(*DIFFUSERS_IMPORT_NOISE):
        cls = getattr(diffusers, spec.class_name)
    if checkpoint:
        try:
            model = cls.from_pretrained(checkpoint, subfolder="transformer", torch_dtype=torch.bfloat16)
        except (OSError, EnvironmentError):
            model = cls.from_pretrained(checkpoint, torch_dtype=torch.bfloat16)
        return model.to(device).eval()
    torch.manual_seed(SEED)
    # diffusers 0.42 warns on every .to(dtype) about "modules kept in float32: []" (none here)
    with torch.device(device), quiet_loggers("diffusers.models.modeling_utils"):
        model = cls(**(spec.tiny_config if tiny else spec.config)).to(torch.bfloat16)
    return model.eval()


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a quantized weight subclass counts its inner tensors (qdata, scales)."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(t) for t in model.state_dict().values())


def preset_for(spec: ModelSpec, tiny: bool) -> dqd.Preset:
    """The model's preset; for --tiny models its size rule lowered to 32 features, so that the
    narrow layers of a tiny model are quantized as the wide ones of the real model would be."""
    preset = dqd.PRESETS[spec.name]
    return dataclasses.replace(preset, min_features=32) if tiny else preset


def apply_format(model: torch.nn.Module, spec: ModelSpec, fmt: str, backend: str, tiny: bool = False) -> None:
    """Quantize ``model`` in place for configuration (fmt, backend), with the model's preset."""
    if fmt == "bf16":
        return
    preset = preset_for(spec, tiny)
    if fmt in ("mxfp8", "nvfp4"):
        dqd.quantize(model, fmt, preset=preset, backend=backend, verbose=False)
        return
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def quantized(module, name):
        return isinstance(module, torch.nn.Linear) and preset.skip_reason(name, module) is None

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=quantized)


def apply_compile(model: torch.nn.Module, mode: str) -> None:
    """Regional compile for both compiled modes; the CUDA graph of regional-cudagraphs is captured by
    ``denoise`` around the whole step (inductor's own cudagraphs, mode="reduce-overhead", replay
    each repeated block's graph over the previous block's outputs and fail)."""
    if mode in ("regional", "regional-cudagraphs"):
        model.compile_repeated_blocks(fullgraph=True)


# ----------------------------------------------------------------------------------------------
# Context parallelism (--cp)
# ----------------------------------------------------------------------------------------------


def cp_launch_error(degree: int) -> str | None:
    """Why this process cannot run ``--cp degree`` (not started by torchrun with ``degree``
    processes, or fewer GPUs than processes), or None."""
    launch = f"launch it as: torchrun --nproc-per-node {degree} -m dq_kernels bench model ... --cp {degree}"
    world = os.environ.get("WORLD_SIZE")
    if world is None or "LOCAL_RANK" not in os.environ:
        return f"bench model: --cp {degree} runs one process per GPU and WORLD_SIZE / LOCAL_RANK are unset; {launch}"
    if int(world) != degree:
        return (f"bench model: --cp {degree} needs WORLD_SIZE == {degree}, but torchrun started {world} processes; "
                f"{launch}")
    if torch.cuda.is_available() and torch.cuda.device_count() < degree:
        return f"bench model: --cp {degree} needs {degree} GPUs, this machine has {torch.cuda.device_count()}"
    return None


def cp_error(spec: ModelSpec, degree: int, kind: str, tiny: bool, compile_modes: Sequence[str]) -> str | None:
    """Why ``spec`` cannot run with context parallelism (degree, kind) here, or None."""
    import diffusers

    with quiet_loggers(*DIFFUSERS_IMPORT_NOISE):
        cls = getattr(diffusers, spec.class_name)
    if getattr(cls, "_cp_plan", None) is None:
        return f"bench model: --cp: diffusers' {spec.class_name} has no _cp_plan (no context parallelism)"
    heads = (spec.tiny_config if tiny else spec.config)["num_attention_heads"]
    if kind == "ulysses" and heads % degree:
        return (f"bench model: --cp {degree} ulysses splits the heads: {spec.name} has {heads}, "
                f"not a multiple of {degree}")
    if kind == "ring" and not torch.cuda.is_available():
        return (f"bench model: --cp-kind ring needs an attention backend that returns the log-sum-exp; in "
                f"diffusers {diffusers.__version__} those are CUDA-only (native attention refuses return_lse). "
                "Use --cp-kind ulysses")
    if "regional-cudagraphs" in compile_modes:
        return ("bench model: --cp with --compile regional-cudagraphs (collectives inside a captured step) "
                "is not supported")
    return None


def init_process_group() -> None:
    """The default process group of this torchrun process: nccl on its GPU (LOCAL_RANK), with NVLink
    multicast off unless NCCL_NVLS_ENABLE says otherwise; gloo without CUDA."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


@contextlib.contextmanager
def _one_device_without_accelerator():
    """diffusers 0.42 ``ModelMixin._resolve_parallel_config`` computes the device as ``rank %
    torch.accelerator.device_count()``, which divides by zero on a machine without an accelerator;
    the device it computes is only recorded. Inside this context a CPU-only process reports one
    device; with an accelerator nothing changes."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def enable_cp(model: torch.nn.Module, degree: int, kind: str) -> None:
    """diffusers' context parallelism of ``degree`` (``kind``: "ulysses" or "ring") on ``model``:
    hooks split the inputs along the sequence and gather the output; the weights are untouched."""
    import diffusers

    if kind == "ring":
        model.set_attention_backend(RING_ATTENTION_BACKEND)
    config = diffusers.ContextParallelConfig(**{f"{kind}_degree": degree})
    with _one_device_without_accelerator(), quiet_loggers("diffusers.models.modeling_utils"):
        model.enable_parallelism(config=config)


def _gather(value) -> list:
    """``value`` from every rank, in rank order."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


# ----------------------------------------------------------------------------------------------
# The denoising loop
# ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One (model, batch)'s fixed inputs: conditioning, negative conditioning, initial noise."""

    kwargs: dict
    negative: dict
    noise: torch.Tensor


def make_inputs(spec: ModelSpec, batch: int, resolution, tiny: bool, device: str, seed: int = SEED + 1) -> Inputs:
    """Conditioning and noise drawn from one generator seeded with ``seed``; zeros as negatives."""
    g = torch.Generator(device=device).manual_seed(seed)
    kwargs, noise = spec.inputs(batch, resolution, tiny, device, g)
    negative = {key: torch.zeros_like(kwargs[key]) for key in spec.negative_keys}
    return Inputs(kwargs, negative, noise)


def with_precomputed(model, spec: ModelSpec, inputs: Inputs) -> Inputs:
    """``inputs`` with the arguments ``spec.precompute`` computes once from ``model`` added to the
    conditioning, so that no forward of the loop copies host values to the device."""
    if spec.precompute is None:
        return inputs
    return dataclasses.replace(inputs, kwargs={**inputs.kwargs, **spec.precompute(model, inputs.kwargs, inputs.noise)})


def _velocity(model, spec: ModelSpec, inputs: Inputs, x: torch.Tensor, time: dict) -> torch.Tensor:
    """The guided velocity at latent x; ``time`` holds the timestep tensors of this step."""
    batch = x.shape[0]
    kwargs = {**inputs.kwargs, **time}
    if spec.cfg == "double_batch":
        def doubled(key, value):
            if not (torch.is_tensor(value) and value.shape[:1] == (batch,)):
                return value
            return torch.cat([value, inputs.negative.get(key, value)])

        out = model(**{"hidden_states": torch.cat([x, x])}, **{k: doubled(k, v) for k, v in kwargs.items()},
                    return_dict=False)[0]
        cond, uncond = out.chunk(2)
        return uncond + GUIDANCE * (cond - uncond)
    cond = model(**{"hidden_states": x}, **kwargs, return_dict=False)[0]
    if spec.cfg == "two_forwards":
        uncond = model(**{"hidden_states": x}, **{**kwargs, **inputs.negative}, return_dict=False)[0]
        return uncond + GUIDANCE * (cond - uncond)
    return cond


class GraphedVelocity:
    """The velocity function captured once in a CUDA graph (after the warm-up steps have compiled
    everything) and replayed: the latent and the timestep tensors are copied into static buffers."""

    def __init__(self, model, spec: ModelSpec, inputs: Inputs, x: torch.Tensor, time: dict):
        self.x = x.clone()
        self.time = {k: v.clone() for k, v in time.items()}
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.v = _velocity(model, spec, inputs, self.x, self.time)

    def __call__(self, x: torch.Tensor, time: dict) -> torch.Tensor:
        self.x.copy_(x)
        for key, value in time.items():
            self.time[key].copy_(value)
        self.graph.replay()
        return self.v


def denoise(model, spec: ModelSpec, inputs: Inputs, steps: int, progress: tqdm | None = None,
            cuda_graph: bool = False):
    """(final latent, per-step seconds): ``steps`` Euler steps of x += (sigma_next - sigma) * v.
    cuda_graph: the last warm-up step captures the step's forwards in a CUDA graph, and every step
    from there on replays it."""
    inputs = with_precomputed(model, spec, inputs)
    x = inputs.noise.clone()
    sigmas = [1.0 - i / steps for i in range(steps + 1)]
    time_kwargs = spec.time_kwargs or _timestep
    graphed = None
    seconds = []
    for i, (sigma, sigma_next) in enumerate(zip(sigmas, sigmas[1:])):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step_time = time_kwargs(sigma, x, inputs.kwargs)
        if cuda_graph and i >= WARMUP_STEPS - 1:
            if graphed is None:
                graphed = GraphedVelocity(model, spec, inputs, x, step_time)
            v = graphed(x, step_time)
        else:
            v = _velocity(model, spec, inputs, x, step_time)
        x = (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        if progress is not None:
            progress.update()
    return x, seconds


# ----------------------------------------------------------------------------------------------
# Images (--images): quality against bf16
# ----------------------------------------------------------------------------------------------


class ImageRun:
    """``count`` images per configuration, from one model (name) of a checkpoint: image i has prompt
    i (cycling through the prompts) and noise seeded with SEED + i, is denoised in ``steps`` steps
    at batch 1 (eager steps through whatever compile mode the model has, no whole-step CUDA graph)
    and decoded by the checkpoint's VAE (bench/images.py). The first images made (bf16's) are the
    reference of the LPIPS and PSNR of all (bench/quality.py)."""

    def __init__(self, spec: ModelSpec, checkpoint: str, count: int, prompts_path: str, resolution, tiny: bool,
                 device: str, steps: int, save_dir: str | None = None):
        self.spec, self.count, self.resolution, self.tiny, self.device = spec, count, resolution, tiny, device
        self.steps, self.save_dir = steps, save_dir
        self.prompts = bench_images.load_prompts(spec.name, checkpoint, prompts_path, device)
        self.decoder = bench_images.Decoder(spec.name, checkpoint)
        self.lpips = quality.load_lpips(device)
        self.reference: torch.Tensor | None = None
        self.latents: list[torch.Tensor] = []

    def image_inputs(self, i: int) -> Inputs:
        """Image i's inputs (made when needed, so that none sit in GPU memory during timed runs)."""
        index = i % len(self.prompts.texts)
        made = partial(make_inputs, self.spec, 1, self.resolution, self.tiny, self.device)
        if self.prompts.encoded is None:  # seeded random conditioning per prompt
            conditioning = made(bench_images.prompt_seed(self.prompts.texts[index]))
        else:  # the encoded prompt in place of the random conditioning
            conditioning = made()
            conditioning.kwargs.update({k: v.to(self.device) for k, v in self.prompts.encoded[index].items()})
        return Inputs(conditioning.kwargs, conditioning.negative, made(SEED + i).noise)

    def denoise_all(self, model: torch.nn.Module, progress: tqdm | None = None) -> None:
        """Denoise every image's latent with ``model`` (kept in ``latents`` until ``measure``)."""
        self.latents = [denoise(model, self.spec, self.image_inputs(i), self.steps, progress)[0]
                        for i in range(self.count)]

    def measure(self, row: "Row", label: str) -> None:
        """Decode the latents of ``denoise_all``, fill the row's quality fields against the
        reference (the first call's images become it) and save PNGs as ``{label}-{i:03d}.png``."""
        images = self.decoder.decode(self.latents, self.resolution, self.image_inputs(0).kwargs)
        self.latents = []
        if self.reference is None:
            self.reference = images
        row.images = len(images)
        row.image_conditioning = self.prompts.conditioning
        psnr = statistics.fmean(quality.psnr(images, self.reference))
        row.psnr = None if math.isinf(psnr) else psnr  # JSON has no infinity
        if self.lpips.distance is None:
            row.lpips_unavailable = self.lpips.unavailable
        else:
            row.lpips = statistics.fmean(self.lpips.distance(images, self.reference))
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            for i, image in enumerate(images):
                bench_images.save_png(image, os.path.join(self.save_dir, f"{label}-{i:03d}.png"))


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    format: str
    backend: str
    batch: int
    compile: str
    step_ms: float
    speedup_vs_bf16: float | None
    peak_gib: float | None
    weights_gib: float
    rel_err: float
    cosine: float
    compile_s: float | None = None
    cp_degree: int = 1  # context-parallel degree: 1 is one GPU
    cp_kind: str | None = None  # "ulysses" or "ring" when cp_degree > 1
    rel_err_vs_one_gpu: float | None = None  # CP rows: against this configuration's cp 1 latent
    peak_gib_per_rank: list[float] | None = None  # CP rows on CUDA: each rank's peak (peak_gib is their max)
    images: int | None = None  # --images: how many images this row's model made (see bench/images.py)
    lpips: float | None = None  # their mean LPIPS (AlexNet) against the bf16 row's images; None: see below
    psnr: float | None = None  # their mean PSNR in dB (images in [0, 1]) against the bf16 row's; None with
    # images: infinite (an image equal to its reference, as in the bf16 row itself)
    lpips_unavailable: str | None = None  # why LPIPS is None although images were made
    image_conditioning: str | None = None  # how the prompts reached the transformer (bench/images.py)

    def to_json(self) -> dict:
        return asdict(self)

    def cells(self) -> list[str]:
        """The row as the table shows it, one string per column of TABLE_HEADERS."""
        def optional(value, spec):
            return "-" if value is None else format(value, spec)

        return [
            self.model, str(self.batch), self.format, self.backend, self.compile,
            f"{self.cp_degree} {self.cp_kind}" if self.cp_kind else "1", f"{self.step_ms:.1f}",
            optional(self.speedup_vs_bf16, ".2f"), optional(self.peak_gib, ".2f"), f"{self.weights_gib:.2f}",
            f"{self.rel_err:.4f}", f"{self.cosine:.5f}", optional(self.rel_err_vs_one_gpu, ".1e"),
            optional(self.compile_s, ".0f"),
        ]  # fmt: skip

    def quality_cells(self) -> list[str]:
        """The image-quality cells (QUALITY_HEADERS): "-" without images, "n/a" for an LPIPS that
        could not run (``table`` prints why)."""
        if not self.images:
            return ["-", "-", "-"]
        return [str(self.images), "n/a" if self.lpips is None else f"{self.lpips:.4f}",
                "inf" if self.psnr is None else f"{self.psnr:.2f}"]


TABLE_HEADERS = ("model", "batch", "format", "backend", "compile", "cp", "ms/step", "x bf16", "peak GiB",
                 "weights GiB", "rel err", "cosine", "err vs cp 1", "compile s")
QUALITY_HEADERS = ("images", "LPIPS", "PSNR dB")  # shown when a row has images (--images)


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative error, cosine similarity) of ``out`` against ``ref``, in float64."""
    out, ref = out.double().flatten().cpu(), ref.double().flatten().cpu()
    return report.rel_err(out, ref), torch.nn.functional.cosine_similarity(out, ref, dim=0).item()


def format_unavailable(fmt: str) -> str | None:
    """Why ``fmt`` cannot run on this machine, or None."""
    if fmt != "fp8_rowwise":
        return None
    if not torch.cuda.is_available():
        return "torchao's float8 needs a CUDA GPU of compute capability >= 8.9; there is no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return f"torchao's float8 needs compute capability >= 8.9; this GPU is {major}.{minor}"
    return None


def compile_unavailable(mode: str) -> str | None:
    """Why compile mode ``mode`` cannot run on this machine, or None."""
    if mode == "regional-cudagraphs" and not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; there is none"
    return None


def configurations(formats: Sequence[str], backends: Sequence[str]) -> list[tuple[str, str]]:
    """(format, backend) pairs: bf16 and fp8_rowwise once (backend "-"), ours once per backend."""
    pairs = []
    for fmt in formats:
        if fmt in ("bf16", "fp8_rowwise"):
            pairs.append((fmt, "-" if fmt == "bf16" else "torchao"))
        else:
            pairs.extend((fmt, backend) for backend in backends)
    return pairs


def validate(models: Sequence[str], resolution: tuple[int, ...] | None, steps: int, compile_modes: Sequence[str],
             tiny: bool, checkpoint: str | None, batches: Sequence[int] = (1,), cp: int = 1,
             cp_kind: str = "ulysses", images: int = 0, prompts: str | None = None,
             save_images: str | None = None) -> None:
    """ValueError, saying why, unless the arguments make a run: a CUDA device or ``tiny``; batch
    sizes >= 1; more steps than the warm-up; ``checkpoint`` an existing folder, for one model, and
    with ``tiny`` only when it holds the tiny config (``tiny_checkpoint_error``); a resolution each
    model can take (``ModelSpec.resolution_error``); for ``cp`` > 1 a torchrun launch of ``cp`` processes
    (``cp_launch_error``) and models that can run it (``cp_error``); ``images`` only with a
    checkpoint holding a VAE the bench can decode with (``images.images_error``), a prompts file
    with a prompt, and not with ``cp`` > 1; ``save_images`` only with ``images``."""
    if cp_kind not in CP_KINDS:
        raise ValueError(f"bench model: --cp-kind must be one of {', '.join(CP_KINDS)}, got {cp_kind!r}")
    if cp > 1:
        error = cp_launch_error(cp) or next(filter(None, (cp_error(MODELS[name], cp, cp_kind, tiny, compile_modes)
                                                          for name in models)), None)
        if error:
            raise ValueError(error)
    if any(batch < 1 for batch in batches):
        raise ValueError(f"bench model: --batch sizes must be >= 1, got {' '.join(map(str, batches))}")
    if not torch.cuda.is_available() and not tiny:
        raise ValueError("bench model: no CUDA device: full-size models need a GPU. Add --tiny for a smoke test on the CPU")
    if steps <= WARMUP_STEPS:
        raise ValueError(f"bench model: --steps must be more than the {WARMUP_STEPS} warm-up steps")
    if checkpoint and len(models) != 1:
        raise ValueError("bench model: --checkpoint needs exactly one model")
    if checkpoint and not os.path.isdir(checkpoint):
        raise ValueError(f"bench model: --checkpoint {checkpoint}: no such folder")
    if save_images and not images:
        raise ValueError("bench model: --save-images writes the images of --images N; add --images")
    if images and cp > 1:
        raise ValueError("bench model: --images with --cp is not supported; make the images in a run without --cp")
    if images:
        error = next(filter(None, (bench_images.images_error(name, checkpoint) for name in models)), None)
        if error:
            raise ValueError(error)
        bench_images.read_prompts(prompts)
    if tiny and checkpoint:
        error = tiny_checkpoint_error(MODELS[models[0]], checkpoint)
        if error:
            raise ValueError(error)
    for spec in (MODELS[name] for name in models):
        error = spec.resolution_error(resolution) if resolution is not None else None
        if error:
            raise ValueError(f"bench model: --resolution: {error}")


def tiny_checkpoint_error(spec: ModelSpec, checkpoint: str) -> str | None:
    """Why ``checkpoint``'s transformer cannot run with --tiny (whose inputs and preset are sized for
    ``spec.tiny_config``: a checkpoint of that config, e.g. a test's), or None."""
    paths = [os.path.join(checkpoint, "transformer", "config.json"), os.path.join(checkpoint, "config.json")]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        return f"bench model: --checkpoint {checkpoint}: no transformer/config.json or config.json"
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    wrong = [f"{key} {config.get(key)!r}, not {value!r}" for key, value in spec.tiny_config.items()
             if config.get(key) != (list(value) if isinstance(value, tuple) else value)]
    if wrong:
        return (f"bench model: --tiny with --checkpoint needs a checkpoint of the tiny {spec.name} config; "
                f"{path} has {'; '.join(wrong)}. Drop --tiny for a full-size checkpoint")
    return None


def run(
    models: Sequence[str],
    batches: Sequence[int],
    resolution: tuple[int, ...] | None,
    steps: int,
    formats: Sequence[str],
    backends: Sequence[str],
    compile_modes: Sequence[str],
    tiny: bool = False,
    checkpoint: str | None = None,
    on_row: Callable[[list[Row]], None] | None = None,
    cp: int = 1,
    cp_kind: str = "ulysses",
    images: int = 0,
    prompts: str | None = None,
    save_images: str | None = None,
) -> list[Row]:
    """Every model x batch x configuration x compile mode; see the module docstring. With ``cp`` > 1
    (under torchrun, one process per GPU) each of those runs on one GPU and then with context
    parallelism of degree ``cp`` and kind ``cp_kind``; every rank returns the rows.

    Formats and compile modes that cannot run on this machine (``format_unavailable``,
    ``compile_unavailable``) are skipped with a printed line saying why. ``on_row(rows)`` is called
    (on rank 0) with the rows so far after each one finishes (the CLI rewrites its JSON there, so a
    crash keeps the finished rows).

    ``images`` > 0 (with ``checkpoint`` and the ``prompts`` file, not with ``cp``): in the first
    batch size, each configuration's model also makes that many images (``ImageRun``), saved as PNGs under
    ``save_images`` when given, and its row gets their LPIPS and PSNR against bf16's."""
    validate(models, resolution, steps, compile_modes, tiny, checkpoint, batches, cp, cp_kind, images, prompts,
             save_images)
    rank = 0
    if cp > 1:
        import torch.distributed as dist

        init_process_group()
        rank = dist.get_rank()
    degrees = (1, cp) if cp > 1 else (1,)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    formats = _runnable(formats, format_unavailable, "format")
    compile_modes = _runnable(compile_modes, compile_unavailable, "compile mode")
    if not compile_modes:
        raise ValueError("bench model: none of the --compile modes asked for can run on this machine")
    formats = ["bf16", *[f for f in formats if f != "bf16"]]  # bf16 first: it is the reference
    pairs = configurations(formats, backends)
    total = len(models) * len(pairs) * len(compile_modes) * (len(batches) * len(degrees) + images) * steps
    rows: list[Row] = []
    with torch.inference_mode(), tqdm(total=total, desc="bench model", unit="step", disable=rank != 0) as progress:
        for name in models:
            spec = MODELS[name]
            res = resolution or (spec.tiny_resolution if tiny else spec.default_resolution)
            image_run = ImageRun(spec, checkpoint, images, prompts, res, tiny, device, steps, save_images) if images \
                else None
            for batch in batches:
                inputs = make_inputs(spec, batch, res, tiny, device)
                reference = None
                bf16_ms: dict[tuple[str, int], float] = {}
                for fmt, backend in pairs:
                    for mode in compile_modes:
                        one_gpu = None
                        for degree in degrees:
                            progress.set_postfix_str(f"{name} b{batch} {fmt}/{backend} {mode} cp{degree}")
                            with_images = image_run is not None and batch == batches[0]
                            make_images = partial(image_run.denoise_all, progress=progress) if with_images else None
                            row, latent = _run_one(spec, inputs, batch, fmt, backend, mode, steps, tiny, device,
                                                   checkpoint, progress, degree, cp_kind, make_images)
                            if with_images:
                                image_run.measure(row, "-".join(p for p in (name, fmt, backend, mode) if p != "-"))
                            if reference is None:  # bf16 on one GPU in the first compile mode asked for
                                reference = latent
                            if one_gpu is None:
                                one_gpu = latent
                            else:
                                row.rel_err_vs_one_gpu = compare(latent, one_gpu)[0]
                            row.rel_err, row.cosine = compare(latent, reference)
                            if fmt == "bf16":
                                bf16_ms[mode, degree] = row.step_ms
                            baseline = bf16_ms.get((mode, degree))
                            row.speedup_vs_bf16 = baseline / row.step_ms if baseline else None
                            rows.append(row)
                            if rank != 0:
                                continue
                            if on_row is not None:
                                on_row(rows)
                            tqdm.write(f"  {name} batch {batch} {fmt}/{backend} {mode} cp {degree}: "
                                       f"{row.step_ms:.1f} ms/step, rel err {row.rel_err:.4f}")
    return rows


def _runnable(names: Sequence[str], unavailable: Callable[[str], str | None], what: str) -> list[str]:
    """``names`` without those that cannot run here, printing why each is skipped."""
    kept = []
    for name in names:
        reason = unavailable(name)
        if reason is None:
            kept.append(name)
        else:
            print(f"bench model: skipping {what} {name}: {reason}")
    return kept


def _run_one(spec, inputs, batch, fmt, backend, mode, steps, tiny, device, checkpoint, progress, cp=1,
             cp_kind="ulysses", on_model=None):
    """(row, final latent) of one configuration; ``on_model(model)`` runs after the timed steps."""
    model = build(spec, tiny, device, checkpoint)
    apply_format(model, spec, fmt, backend, tiny)
    weights = weight_bytes(model)
    if cp > 1:
        enable_cp(model, cp, cp_kind)
    apply_compile(model, mode)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    latent, seconds = denoise(model, spec, inputs, steps, progress, cuda_graph=mode == "regional-cudagraphs")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    measured = seconds[WARMUP_STEPS:]
    step_ms = statistics.median(measured) * 1e3
    peaks = None
    if cp > 1:  # the slowest rank's step time; every rank's peak memory
        step_ms = max(_gather(step_ms))
        if peak is not None:
            peaks = _gather(peak)
            peak = max(peaks)
    compile_s = max(0.0, sum(seconds[:WARMUP_STEPS]) - WARMUP_STEPS * step_ms / 1e3) if mode != "none" else None
    if on_model is not None:
        on_model(model)
    del model
    if mode != "none":
        torch._dynamo.reset()  # its caches keep the compiled model alive (seen as peak memory of the next ones)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    row = Row(spec.name, fmt, backend, batch, mode, step_ms, None, peak, weights / 2**30, 0.0, 1.0, compile_s,
              cp_degree=cp, cp_kind=cp_kind if cp > 1 else None, peak_gib_per_rank=peaks)
    return row, latent


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """The rows grouped by (model, batch); with --images also the quality columns, and below the
    table how the prompts conditioned the images and why LPIPS is missing where it is."""
    with_images = any(r.images for r in rows)
    headers = TABLE_HEADERS + (QUALITY_HEADERS if with_images else ())
    groups = {}
    for r in rows:
        groups.setdefault((r.model, r.batch), []).append(r.cells() + (r.quality_cells() if with_images else []))
    text = report.format_table(headers, list(groups.values()), right_aligned=range(6, len(headers)))
    notes = [f"images ({r.model}): {r.image_conditioning}" for r in rows if r.images]
    notes += [f"LPIPS n/a ({r.model}): {r.lpips_unavailable}" for r in rows if r.images and r.lpips_unavailable]
    return "\n".join([text, *dict.fromkeys(notes)])


def plot(rows: Sequence[Row], path: str, device: str, date: str) -> None:
    """PNG: step time x bf16 (``path``) and weight memory (``path`` with ``-memory`` before the
    suffix), one panel per model (``report.plot_model``)."""
    report.plot_model([r.to_json() for r in rows], path, device, date)
