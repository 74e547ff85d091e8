"""Name -> builder registries. Adding a method is one file plus one `@register_*` line."""
from __future__ import annotations

import inspect
from typing import Callable


class UnknownName(KeyError):
    """An unknown registered name. Prints its message as written (a plain KeyError adds quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateName(ValueError):
    """A name registered a second time for something else: the first registration would be silently lost."""


def _same_definition(a, b) -> bool:
    """The same object, or the same definition imported again (a module reloaded, e.g. by a dev server)."""
    return a is b or (getattr(a, "__module__", None) == getattr(b, "__module__", 0)
                      and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", 0))


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        def deco(obj):
            if name in self._items and not _same_definition(self._items[name], obj):
                first = self._items[name]
                raise DuplicateName(f"{self.kind} {name!r} is registered twice: by "
                                    f"{getattr(first, '__module__', '?')}.{getattr(first, '__qualname__', first)} and "
                                    f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}; "
                                    f"give one of them another name")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> Callable:
        if name not in self._items:  # perhaps a plug-in's: import the named ones (core.plugins) and look again
            from core import plugins
            try:
                plugins.load_plugins()
            except plugins.PluginError as err:
                raise UnknownName(f"unknown {self.kind} {name!r}; {err}") from None
            if name not in self._items:
                raise UnknownName(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))} "
                                  f"({plugins.note()})")
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
    """Registering the same description again is harmless (a module imported twice); another one is refused,
    since the dashboard would silently describe one method's map with another's words."""
    if MAP_DESCRIPTIONS.get(name, description) != description:
        raise DuplicateName(f"map {name!r} is registered twice with different descriptions "
                            f"({MAP_DESCRIPTIONS[name][:60]!r}... and {description[:60]!r}...); give one of them another name")
    MAP_DESCRIPTIONS[name] = description
