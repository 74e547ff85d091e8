"""Pooling heads. Importing this package registers every head."""
import importlib
import pkgutil

from core.models.heads.base import Head, HeadOutput

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Head", "HeadOutput"]
