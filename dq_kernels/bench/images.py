"""The images of ``bench model --images``: the prompts, how a prompt reaches the transformer, and
the checkpoint's VAE turning a final latent into images as each model's diffusers pipeline does.

Prompts: one per line of the ``--prompts`` file (blank lines skipped). How a prompt conditions the
transformer depends on the checkpoint:
- with its text encoders (FLUX: ``text_encoder`` and ``text_encoder_2`` in ``model_index.json``),
  diffusers' ``FluxPipeline.encode_prompt`` gives the T5 states, the pooled CLIP vector and the text
  ids, as the pipeline computes them (T5 padded to 512 tokens);
- otherwise (a checkpoint of only the transformer and the VAE, or a model other than FLUX) the
  conditioning is seeded random per prompt (the seed is the CRC-32 of the prompt's text): the text
  itself does not reach the model. ``Prompts.conditioning`` says which, and the output repeats it.

Latents -> images (``Decoder``): the bench's final latent is packed as the pipeline's is, [batch,
tokens, channels] (FLUX, QwenImage: a 2x2 latent patch per token); it is unpacked as the pipeline's
``_unpack_latents`` does (``unpack``: the pipeline classes cannot be imported without the
transformers package), de-normalized with the VAE config's factors, decoded in bf16 and mapped from
[-1, 1] to [0, 1] (diffusers' ``VaeImageProcessor.denormalize``): images [batch, 3, H, W] float32.
- FLUX (``AutoencoderKL``): latent / scaling_factor + shift_factor.
- QwenImage (``AutoencoderKLQwenImage``, a video VAE run on one frame): latent * latents_std +
  latents_mean per channel, frame 0 of the output.
- LTX-2 (``AutoencoderKLLTX2Video``): tokens of one latent voxel each (patch 1) on the grid the
  transformer was given, latent * latents_std / scaling_factor + latents_mean, decoded with the
  pipeline's default decode timestep 0; each video's frames are the images. The audio latent (a
  fixed input of the bench, not denoised) is not decoded.
"""

from __future__ import annotations

import gc
import json
import os
import zlib
from dataclasses import dataclass

import torch

from dq_kernels._quiet import DIFFUSERS_IMPORT_NOISE, quiet_loggers

# model name -> its VAE class
DECODERS = {"flux": "AutoencoderKL", "qwenimage": "AutoencoderKLQwenImage", "ltx2": "AutoencoderKLLTX2Video"}
# model name -> (pipeline class whose encode_prompt is used, the text encoders it needs); models not
# listed use no text encoder
TEXT_ENCODERS = {"flux": ("FluxPipeline", ("text_encoder", "text_encoder_2"))}


def images_error(model: str, checkpoint: str | None) -> str | None:
    """Why ``--images`` cannot run for ``model`` with ``checkpoint``, or None."""
    if not checkpoint:
        return ("bench model: --images decodes the final latents with the checkpoint's VAE: it needs --checkpoint "
                "PATH (a diffusers folder with transformer/ and vae/)")
    if not os.path.isdir(os.path.join(checkpoint, "vae")):
        return f"bench model: --images needs the checkpoint's VAE, and {checkpoint} has no vae/ folder"
    return None


def read_prompts(path: str | None) -> list[str]:
    """The prompts of ``path``, one per non-blank line; ValueError naming --prompts otherwise."""
    if not path:
        raise ValueError("bench model: --images needs --prompts FILE (a text file, one prompt per line)")
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as err:
        raise ValueError(f"bench model: --prompts {path}: {err.strerror or err}") from None
    if not prompts:
        raise ValueError(f"bench model: --prompts {path} holds no prompt (one per line; blank lines are skipped)")
    return prompts


def prompt_seed(prompt: str) -> int:
    """The seed of a prompt's random conditioning (without text encoders): CRC-32 of its UTF-8 text."""
    return zlib.crc32(prompt.encode("utf-8"))


@dataclass
class Prompts:
    """The prompts and how they condition the transformer.

    encoded: per prompt, the forward keyword arguments the text encoders give (tensors on the CPU), or
        None: seeded random conditioning (``prompt_seed``).
    conditioning: one line for the output saying which."""

    texts: list[str]
    encoded: list[dict] | None
    conditioning: str


def has_text_encoders(model: str, checkpoint: str) -> bool:
    """Whether ``checkpoint`` holds every text encoder the model's pipeline needs (listed in its
    model_index.json and present as folders)."""
    needed = TEXT_ENCODERS.get(model, (None, ()))[1]
    index = os.path.join(checkpoint, "model_index.json")
    if not needed or not os.path.isfile(index):
        return False
    with open(index, encoding="utf-8") as f:
        components = json.load(f)
    return all(components.get(name) and components[name][0] and os.path.isdir(os.path.join(checkpoint, name))
               for name in needed)


def load_prompts(model: str, checkpoint: str, path: str, device: str) -> Prompts:
    """The prompts of ``path``, encoded by the checkpoint's text encoders when it has them (they are
    loaded, used once and freed), else marked for seeded random conditioning."""
    texts = read_prompts(path)
    if not has_text_encoders(model, checkpoint):
        why = (f"diffusers' text encoders are not used for {model} here" if model not in TEXT_ENCODERS else
               f"{checkpoint} has no text encoders ({' and '.join(TEXT_ENCODERS[model][1])})")
        return Prompts(texts, None, f"seeded random conditioning per prompt: {why}, so the prompts' text does not "
                                    "reach the model (images compare formats, not prompt following)")
    import diffusers

    with quiet_loggers(*DIFFUSERS_IMPORT_NOISE):
        pipeline_cls = getattr(diffusers, TEXT_ENCODERS[model][0])
    # transformers >= 5 fetches kernels from the Hub by default (needs the kernels package and network); the
    # bench loads from disk only
    os.environ.setdefault("USE_HUB_KERNELS", "0")
    pipe = pipeline_cls.from_pretrained(checkpoint, transformer=None, vae=None, torch_dtype=torch.bfloat16).to(device)
    encoded = []
    for text in texts:
        embeds, pooled, text_ids = pipe.encode_prompt(text, prompt_2=None, device=device)
        encoded.append(dict(encoder_hidden_states=embeds.to(torch.bfloat16).cpu(),
                            pooled_projections=pooled.to(torch.bfloat16).cpu(), txt_ids=text_ids.float().cpu()))
    del pipe
    gc.collect()  # the text encoders must be gone before the timed runs measure their peak memory
    return Prompts(texts, encoded, "the checkpoint's text encoders (the pipeline's encode_prompt)")


def unpack(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [batch, height * width, 4 * channels] (token (i, j) holds the 2x2 patch at rows
    2i..2i+1, columns 2j..2j+1, feature c * 4 + 2 * dy + dx: FluxPipeline._pack_latents, the same in
    QwenImagePipeline) -> latents [batch, channels, 2 * height, 2 * width]."""
    batch, tokens, features = latents.shape
    if tokens != height * width:
        raise ValueError(f"unpack: {tokens} tokens are not a {height}x{width} grid")
    x = latents.view(batch, height, width, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, features // 4, 2 * height, 2 * width)


class Decoder:
    """The checkpoint's VAE (bf16, kept on the CPU between decodes) and its pipeline's unpacking."""

    def __init__(self, model: str, checkpoint: str):
        import diffusers

        with quiet_loggers(*DIFFUSERS_IMPORT_NOISE):
            vae_cls = getattr(diffusers, DECODERS[model])
        self.model = model
        self.vae = vae_cls.from_pretrained(checkpoint, subfolder="vae", torch_dtype=torch.bfloat16).eval()
        if model == "ltx2":  # the grid comes from the transformer's arguments; the frames are checked after decoding
            return
        if model == "flux":  # FluxPipeline.vae_scale_factor
            self.scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        else:  # QwenImagePipeline.vae_scale_factor
            self.scale_factor = 2 ** len(self.vae.temperal_downsample)
        if self.scale_factor != 8:
            raise ValueError(f"bench model: --images: the checkpoint's VAE downsamples by {self.scale_factor}; the "
                             f"bench's {model} inputs assume 8 (16 pixels per token)")

    def decode(self, latents: list[torch.Tensor], resolution: tuple[int, ...], forward_kwargs: dict) -> torch.Tensor:
        """Images [N, 3, H, W] float32 in [0, 1] on the CPU from N packed latents [1, tokens,
        features] of ``resolution`` (H, W; for LTX-2 (frames, H, W), and the images are the N videos'
        frames in order, N * frames of them); ``forward_kwargs``: the transformer's arguments, where
        LTX-2's latent grid is read. The VAE runs on the latents' device."""
        from diffusers.image_processor import VaeImageProcessor

        self.vae.to(latents[0].device)
        try:
            images = [self._decode_one(latent, resolution, forward_kwargs).cpu() for latent in latents]
        finally:
            self.vae.to("cpu")
        images = torch.cat(images)
        if images.shape[-2:] != tuple(resolution[-2:]):
            raise ValueError(f"bench model: --images: the checkpoint's VAE made {tuple(images.shape[-2:])} images "
                             f"from the latents of a {'x'.join(map(str, resolution))} run")
        return VaeImageProcessor.denormalize(images)

    def _decode_one(self, latents: torch.Tensor, resolution: tuple[int, ...], forward_kwargs: dict) -> torch.Tensor:
        """The VAE's output for one packed latent: [batch (* frames), 3, H, W] float32 in [-1, 1]."""
        config = self.vae.config
        if self.model == "ltx2":
            return self._decode_video(latents, resolution[0], forward_kwargs)
        height, width = resolution
        patches = 2 * self.scale_factor  # pixels per token side
        x = unpack(latents, height // patches, width // patches).to(torch.bfloat16)
        if self.model == "flux":
            return self.vae.decode(x / config.scaling_factor + config.shift_factor, return_dict=False)[0].float()
        shape = (1, config.z_dim, 1, 1, 1)  # QwenImage: [batch, channels, 1 frame, h, w]
        x = (x.unsqueeze(2) * torch.tensor(config.latents_std).view(shape).to(x)
             + torch.tensor(config.latents_mean).view(shape).to(x))
        return self.vae.decode(x, return_dict=False)[0][:, :, 0].float()

    def _decode_video(self, latents: torch.Tensor, frames: int, forward_kwargs: dict) -> torch.Tensor:
        """LTX2Pipeline's decode with its defaults (decode_timestep 0, so no noise is mixed in): the
        tokens [batch, f * h * w, channels] (patch 1) to [batch, channels, f, h, w], latent * std /
        scaling_factor + mean per channel, decode (with timestep 0 where the VAE is conditioned on
        one); the video's frames in order, [batch * frames, 3, H, W]."""
        grid = forward_kwargs["num_frames"], forward_kwargs["height"], forward_kwargs["width"]
        batch = latents.shape[0]
        x = latents.reshape(batch, *grid, -1).permute(0, 4, 1, 2, 3).to(torch.bfloat16)
        shape = (1, -1, 1, 1, 1)
        x = x * self.vae.latents_std.view(shape).to(x) / self.vae.config.scaling_factor + \
            self.vae.latents_mean.view(shape).to(x)
        timestep = torch.zeros(batch, device=x.device, dtype=x.dtype) if self.vae.config.timestep_conditioning \
            else None
        video = self.vae.decode(x, timestep, return_dict=False)[0].float()  # [batch, 3, frames, H, W]
        if video.shape[2] != frames:
            raise ValueError(f"bench model: --images: the checkpoint's VAE made {video.shape[2]} frames from the "
                             f"latents of a {frames}-frame run")
        return video.transpose(1, 2).flatten(0, 1)


def save_png(image: torch.Tensor, path: str) -> None:
    """One image [3, H, W] in [0, 1] as an 8-bit RGB PNG (rounded as diffusers' numpy_to_pil)."""
    from PIL import Image

    array = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(array).save(path)
