"""Scoped silencing of what third-party libraries log when dq_kernels uses them and a dq_kernels user
cannot act on (deprecations inside torchao, diffusers notes about its own internals): only around
our own calls, never globally."""

from __future__ import annotations

import contextlib
import logging

# torch 2.14 logs each enum that torchao 0.18 registers with torch's pytree, as torchao is imported
TORCHAO_IMPORT_NOISE = ("torch.utils._pytree",)


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Raise the named loggers to ERROR inside the block, then restore their levels."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# diffusers 0.42's torchao quantizer module, as it is imported (by diffusers' model classes too),
# warns that torchao 0.18 lacks tensor classes of older torchao versions, which dq_kernels never uses
DIFFUSERS_IMPORT_NOISE = ("diffusers.quantizers.torchao.torchao_quantizer",)
