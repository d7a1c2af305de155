"""Plugins: Python modules or functions that register backends (``dq_kernels.register_backend``)
from outside this package, so that ``dq-kernels`` and user code find them by name.

* ``import_plugin("my_package.my_backend")``: import a module (``dq-kernels --plugin MODULE``);
  importing it registers its backends.
* ``load_plugins()``: load every entry point of the group ``dq_kernels.backends`` of the installed
  packages (the ``dq-kernels`` command does this first). An entry point names a module (imported)
  or a function (called with no arguments); either calls ``register_backend``. In a package's
  pyproject.toml::

      [project.entry-points."dq_kernels.backends"]
      my_backend = "my_package.my_backend"            # a module, or
      my_backend = "my_package.my_backend:register"   # a function

Each loads once per process. A plugin that fails raises ``PluginError`` naming it.
"""

from __future__ import annotations

import importlib
import importlib.metadata

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "import_plugin", "load_plugins"]

ENTRY_POINT_GROUP = "dq_kernels.backends"
_LOADED: set[str] = set()  # the entry points' values loaded so far


class PluginError(RuntimeError):
    """A plugin could not be imported or failed while registering; the message names it."""


def import_plugin(module: str) -> None:
    """Import ``module`` (a dotted module path), which registers its backends."""
    try:
        importlib.import_module(module)
    except Exception as error:
        raise PluginError(f"dq_kernels plugin {module!r} failed to import: {type(error).__name__}: {error}") from error


def load_plugins() -> list[str]:
    """Load every not yet loaded entry point of the group ``dq_kernels.backends``; returns their
    names."""
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value in _LOADED:
            continue
        try:
            plugin = entry_point.load()
            if callable(plugin):
                plugin()
        except Exception as error:
            raise PluginError(
                f"dq_kernels plugin {entry_point.name!r} ({entry_point.value}, entry point group "
                f"{ENTRY_POINT_GROUP!r}) failed: {type(error).__name__}: {error}"
            ) from error
        _LOADED.add(entry_point.value)
        loaded.append(entry_point.name)
    return loaded
