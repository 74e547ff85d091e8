"""Name -> builder registries. Adding a method is one file plus one `@register_*` line."""
from __future__ import annotations

from typing import Callable


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
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}")
        return self._items[name]

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
