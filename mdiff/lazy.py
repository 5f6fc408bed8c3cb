"""Lazy package exports: a package names what it exports, and each name is imported on first use.

    lazy_package(__name__, {"Trainer": "mdiff.train.trainer:Trainer", "losses": "mdiff.losses"})

A value ``"module:attr"`` exports that attribute, a bare ``"module"`` the module itself. So
``import mdiff`` (and ``mdiff --help``) imports no torch until a name that needs it is used.

A submodule shadowed by an export of the same name (``mdiff.provenance.verify``, the module,
and ``verify``, its function) stays shadowed: importing the submodule later does not replace
the package's attribute, exactly as with an eager ``from .verify import verify``.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module

__all__ = ["LazyPackage", "lazy_package"]


class LazyPackage(types.ModuleType):
    """A package module whose exports (``lazy_exports``: name -> target) load on first use."""

    lazy_exports: dict[str, str]

    def __getattr__(self, name: str):
        target = self.lazy_exports.get(name)
        if target is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = import_module(module)
        if attr:
            value = getattr(value, attr)
        types.ModuleType.__setattr__(self, name, value)  # later lookups skip __getattr__
        return value

    def __setattr__(self, name: str, value) -> None:
        target = self.lazy_exports.get(name, "")
        if isinstance(value, types.ModuleType) and ":" in target:
            return  # the import system binding a submodule over an exported attribute
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.lazy_exports))


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make the (initialising) package `name` load `exports` lazily; call it from its
    ``__init__.py`` as ``lazy_package(__name__, {...})``."""
    module = sys.modules[name]
    module.lazy_exports = dict(exports)  # before the class: its lookups read this
    module.__class__ = LazyPackage
