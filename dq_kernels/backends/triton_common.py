"""Triton helpers shared by the Triton backends' kernels: the one Triton implementation of the 128x4
swizzled scale layout as byte offsets (``triton_mm_kernels.load_weight_scales`` reads whole 512-byte
tiles by TMA and un-swizzles them with the same [32, 4, 4] tile shape), of the scale decode and of
the tile order; and ``FastLaunch``, the cheap host path of a kernel launched again. Importing this
module imports triton.
"""

import torch
import triton
import triton.language as tl

from .. import native
from .base import triton_interpreted


def _specialization(arg):
    """What Triton specializes a kernel on for one argument: a tensor's dtype and 16-byte alignment;
    an integer's width, divisibility by 16 and equality to 1; a float's type. None for any other
    argument (FastLaunch then leaves the launch to Triton)."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool, arg
    if isinstance(arg, int):
        return int, arg % 16 == 0, arg == 1, -(2**31) <= arg < 2**31
    if isinstance(arg, float):
        return float
    return None


class FastLaunch:
    """A ``@triton.jit`` kernel whose repeated launches skip Triton's per-launch argument binding,
    specialization and cache lookup (about 20 us of host time per launch with Triton 3.6 on an
    H100 host, measured in docs/host-path.md): the kernel Triton compiled for a specialization is
    kept under the key ``_specialization`` gives each argument (plus the constexprs and the device)
    and launched directly the next time. Called as ``launch(grid, *args, **constexprs_and_options)``
    with every kernel parameter after ``args`` given by name, the constexprs among them. The
    interpreter, unusual arguments and a constexpr passed positionally (keyed on its value's
    divisibility only) take Triton's own path every time."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = {}

    def __call__(self, grid, *args, **kwargs):
        if triton_interpreted():
            self.kernel[grid](*args, **kwargs)
            return
        specs = tuple(_specialization(a) for a in args)
        key = (torch.cuda.current_device(), specs, tuple(kwargs.items()))
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.kernel[grid](*args, **kwargs)
            names = self.kernel.arg_names[len(args):]
            positional_constexpr = any(p.is_constexpr for p in self.kernel.params[: len(args)])
            if None not in specs and not positional_constexpr and all(name in kwargs for name in names):
                self.compiled[key] = (compiled, [kwargs[name] for name in names])
            return
        compiled, constexprs = compiled
        values = (*args, *constexprs)
        stream = native.current_raw_stream(key[0])
        hooks = triton.knobs.runtime  # as Triton's own launch passes them (a profiler's hooks)
        metadata = compiled.launch_metadata(grid, stream, *values)
        grid = (*grid, 1, 1)
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, metadata,
                     hooks.launch_enter_hook, hooks.launch_exit_hook, *values)


@triton.jit
def pow2_from_exponent_bits(biased):
    """float32 2^(biased - 127) for biased in 0..254 (0 gives the subnormal 2^-127)."""
    bits = tl.where(biased == 0, 0x00400000, biased << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def decode_e8m0(e):
    """E8M0 bytes (any integer type) -> float32 2^(e - 127): byte 0 is the subnormal 2^-127, 255 NaN."""
    biased = e.to(tl.int32)
    return tl.where(biased == 255, float("nan"), pow2_from_exponent_bits(biased))


@triton.jit
def e2m1_as_e4m3(codes):
    """e2m1 codes 0..15 (uint8) -> the float8_e4m3fn bytes of their values / 64: codes 0..7 are
    {0, 0.5, 1, 1.5, 2, 3, 4, 6}, 8..15 their negatives (8 is -0.0). Moving the exponent and mantissa
    bits (s e e m -> s 0 0 e e m 0 0) is exact: both formats' subnormals have the exponent of their
    smallest normals, which differ by 2^6."""
    return ((codes & 7) << 2) | ((codes & 8) << 4)


@triton.jit
def swizzled_scale_offsets(rows, blocks, tiles_per_row):
    """[len(rows), len(blocks)] byte offsets of the scales (row, scale column) in the 128x4 swizzled
    layout with tiles_per_row = padded scale columns / 4 (the formula of formats.to_blocked)."""
    r = rows[:, None]
    j = blocks[None, :]
    return (r // 128) * tiles_per_row * 512 + (j // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + j % 4


@triton.jit
def tile_coordinates(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(tile row, tile column) of linear tile index ``tile``: column-major within groups of GROUP_M
    tile rows, the groups in order."""
    tiles_per_group = GROUP_M * num_pid_n
    first_m = (tile // tiles_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % tiles_per_group) % group_rows
    pid_n = (tile % tiles_per_group) // group_rows
    return pid_m, pid_n
