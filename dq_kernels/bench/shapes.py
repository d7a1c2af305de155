"""GEMM shapes for the benchmarks: named presets from the target models, and ``MxKxN`` parsing.

A shape is M x K x N for out[M, N] = a[M, K] @ b[N, K].T, where b is stored like an nn.Linear
weight: M is the number of tokens, K the input features, N the output features.
"""

from __future__ import annotations

from dataclasses import dataclass

# Both block sizes (MXFP8 32, NVFP4 16) divide K; 32 covers both.
K_MULTIPLE = 32
SHAPE_FORM = "MxKxN with positive integers and K a multiple of 32, e.g. 4096x3072x3072"

# The numerics check without a GPU runs every shape at most this big (multiples of 32 kept).
CPU_MAX_M, CPU_MAX_K, CPU_MAX_N = 64, 256, 256


@dataclass(frozen=True)
class Shape:
    """One GEMM: out[M, N] = a[M, K] @ b[N, K].T; ``label`` names the layer it comes from."""

    M: int
    K: int
    N: int
    label: str = ""

    def __str__(self) -> str:
        return f"{self.M}x{self.K}x{self.N}"

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K

    def shrunk(self) -> Shape:
        """The same layer at most 64 x 256 x 256, for a CPU numerics check; the label keeps the
        original size."""
        label = f"{self.label} ({self})" if self.label else f"({self})"
        return Shape(min(self.M, CPU_MAX_M), min(self.K, CPU_MAX_K), min(self.N, CPU_MAX_N), label)


def parse_shape(text: str) -> Shape:
    """``"4096x3072x12288"`` -> Shape(M=4096, K=3072, N=12288). Raises ValueError naming the form."""
    parts = text.strip().lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bad shape {text!r}: expected {SHAPE_FORM}")
    m, k, n = (int(p) for p in parts)
    if min(m, k, n) < 1:
        raise ValueError(f"bad shape {text!r}: M, K and N must be at least 1 (expected {SHAPE_FORM})")
    if k % K_MULTIPLE != 0:
        raise ValueError(f"bad shape {text!r}: K = {k} is not a multiple of {K_MULTIPLE} (expected {SHAPE_FORM})")
    return Shape(m, k, n)


# FLUX.1-dev at 1024x1024, batch 1: 4096 image tokens, 512 text tokens, 4608 in the single blocks.
FLUX = (
    Shape(4096, 3072, 3072, "attn q/k/v/out"),
    Shape(4096, 3072, 12288, "ff up"),
    Shape(4096, 12288, 3072, "ff down"),
    Shape(512, 3072, 3072, "ctx attn q/k/v/out"),
    Shape(512, 3072, 12288, "ctx ff up"),
    Shape(512, 12288, 3072, "ctx ff down"),
    Shape(4608, 3072, 3072, "single attn q/k/v"),
    Shape(4608, 3072, 12288, "single proj_mlp"),
    Shape(4608, 15360, 3072, "single proj_out"),
    Shape(1, 3072, 18432, "norm1 linear"),
    Shape(16, 3072, 18432, "norm1 linear, batch 16"),
)

# QwenImage at 1024x1024: image stream 4096 tokens; text stream is the prompt (about 14 tokens).
QWENIMAGE = (
    Shape(4096, 3072, 3072, "img attn q/k/v/out"),
    Shape(4096, 3072, 12288, "img ff up"),
    Shape(4096, 12288, 3072, "img ff down"),
    Shape(16, 3072, 3072, "txt attn q/k/v/out"),
    Shape(16, 3072, 12288, "txt ff up"),
    Shape(16, 12288, 3072, "txt ff down"),
)

# LTX-2 at 768x512, 121 frames: video 6144 tokens (hidden 4096), audio about 126 (hidden 2048),
# text 1024.
LTX2 = (
    Shape(6144, 4096, 4096, "video attn q/k/v/out"),
    Shape(6144, 4096, 16384, "video ff up"),
    Shape(6144, 16384, 4096, "video ff down"),
    Shape(128, 2048, 2048, "audio attn q/k/v/out"),
    Shape(1024, 4096, 4096, "text cross-attn k/v"),
)

SQUARE = tuple(Shape(n, n, n, "square") for n in (2048, 4096, 8192))

PRESETS: dict[str, tuple[Shape, ...]] = {"flux": FLUX, "qwenimage": QWENIMAGE, "ltx2": LTX2, "square": SQUARE}
