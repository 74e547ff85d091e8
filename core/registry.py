"""Name -> builder registries. Adding a method is one file plus one `@register_*` line."""
from __future__ import annotations

import inspect
from typing import Callable


class UnknownName(KeyError):
    """An unknown registered name. Prints its message as written (a plain KeyError adds quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        def deco(obj):
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise UnknownName(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}")
        return self._items[name]

    def build(self, registered: str, /, *args, config_key: str, **options):
        """`get(registered)(*args, **options)`; options the builder does not take are named with the ones it
        does (a typo in `model.head_args` reads as a config error, not as a TypeError)."""
        factory = self.get(registered)
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(options) - set(params))
            if unknown:
                known = sorted(n for n, p in params.items() if p.default is not p.empty and n not in ("name", "num_classes"))
                raise ValueError(f"{config_key}: {self.kind} {registered!r} has no option {', '.join(unknown)}; "
                                 f"its options: {', '.join(known)}")
        return factory(*args, **options)

    def names(self) -> list[str]:
        return sorted(self._items)


BACKBONES = Registry("backbone")
HEADS = Registry("head")
BLOCKS = Registry("block")
register_backbone = BACKBONES.register
register_head = HEADS.register
register_block = BLOCKS.register

# Every attention map a model can expose, by name -> one-line description. The dashboard renders
# maps generically from this table; no page knows a method by name.
MAP_DESCRIPTIONS: dict[str, str] = {}


def register_map(name: str, description: str) -> None:
    MAP_DESCRIPTIONS[name] = description
