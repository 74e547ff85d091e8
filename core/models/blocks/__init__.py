"""Backbone blocks inserted after a named stage (e.g. CSA). Importing this package registers them."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
