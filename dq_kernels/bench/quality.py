"""Image-quality metrics of ``bench model --images``: PSNR and LPIPS of images against reference
images (the bf16 run's, same prompts and seeds).

Images are float tensors [N, 3, H, W] with values in [0, 1] (what a VAE's [-1, 1] output becomes
after ``x / 2 + 0.5`` and clamping, as diffusers' image processor does before saving).

- PSNR: 10 log10(1 / MSE) per image, peak 1 (images in [0, 1]), in dB; identical images give inf.
- LPIPS: the `lpips` package (Zhang et al. 2018) with AlexNet features, version 0.1, the metric of
  published quantization results. It is optional and imported only when asked for; its AlexNet
  weights come from torchvision's cache (``torch.hub.get_dir()/checkpoints``), which this module
  never downloads into: a machine without network gets "unavailable" with the reason and the fix.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch


def psnr(images: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """PSNR in dB of each image of ``images`` against the same index of ``reference``: both
    [N, 3, H, W] in [0, 1] (peak 1), compared in float64; inf where an image is identical."""
    if images.shape != reference.shape:
        raise ValueError(f"psnr: images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
    mse = (images.double() - reference.double()).square().flatten(1).mean(1)
    return [math.inf if m == 0 else -10 * math.log10(m) for m in mse.tolist()]


@dataclass
class Lpips:
    """LPIPS (AlexNet) as a function of two image batches, or the reason it cannot run here.

    distance(images, reference) -> list of N floats, for [N, 3, H, W] in [0, 1] (0 = identical)."""

    distance: Callable[[torch.Tensor, torch.Tensor], list[float]] | None
    unavailable: str | None = None


def load_lpips(device: str, chunk: int = 8) -> Lpips:
    """LPIPS with AlexNet, run on ``device`` ``chunk`` image pairs at a time and kept on the CPU in
    between (so that it counts in no timed run's peak memory); ``Lpips(None, reason)`` when the
    `lpips` package (or torchvision, which it needs) is missing or torchvision's AlexNet weights are
    not cached."""
    try:
        import lpips
        from torchvision.models import AlexNet_Weights
    except ImportError as err:
        return Lpips(None, f"the lpips package cannot be imported ({err}); pip install lpips (it needs torchvision)")
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url))
    if not os.path.isfile(weights):
        return Lpips(None, f"torchvision's AlexNet weights are not at {weights} (lpips would download them; "
                           "copy the file there from a machine with network, or set TORCH_HOME to a folder "
                           "holding hub/checkpoints/ with it)")
    with warnings.catch_warnings():  # lpips 0.1.4 asks torchvision for AlexNet with its deprecated pretrained=True
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        net = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()

    def distance(images: torch.Tensor, reference: torch.Tensor) -> list[float]:
        net.to(device)
        try:
            with torch.no_grad():  # normalize=True: inputs in [0, 1]
                return [d for a, b in zip(images.split(chunk), reference.split(chunk))
                        for d in net(a.float().to(device), b.float().to(device), normalize=True).flatten().tolist()]
        finally:
            net.to("cpu")

    return Lpips(distance)
