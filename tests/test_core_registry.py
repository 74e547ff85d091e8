"""Registries refuse a second registration under a taken name (the first would be silently lost), but let a
module that is imported again re-register its own definitions."""
import pytest

from core.registry import BLOCKS, HEADS, MAP_DESCRIPTIONS, DuplicateName, Registry, register_head, register_map


def test_a_second_builder_under_a_taken_name_is_refused():
    import core.models.embedder  # noqa: F401  (registers the shipped heads)

    assert "gap" in HEADS.names()
    original = HEADS.get("gap")
    with pytest.raises(DuplicateName, match="head 'gap' is registered twice.*another name"):
        @register_head("gap")
        def my_gap(in_channels, embed_dim, num_classes=None):
            return None
    assert HEADS.get("gap") is original                        # the shipped head is untouched


def test_reregistering_the_same_definition_is_allowed():
    registry = Registry("thing")

    def build():
        return 1
    registry.register("one")(build)
    registry.register("one")(build)                           # e.g. a module imported twice
    assert registry.names() == ["one"]

    def build_again():  # noqa: E306
        return 2
    build_again.__qualname__ = build.__qualname__             # what importlib.reload of the module produces
    registry.register("one")(build_again)
    assert registry.get("one")() == 2


def test_a_map_name_with_another_description_is_refused():
    import core.models.embedder  # noqa: F401  (registers the shipped maps)

    name = next(iter(MAP_DESCRIPTIONS))
    before = dict(MAP_DESCRIPTIONS)
    register_map(name, MAP_DESCRIPTIONS[name])                # same words again: harmless
    with pytest.raises(DuplicateName, match=f"map '{name}' is registered twice"):
        register_map(name, "something else entirely")
    assert MAP_DESCRIPTIONS == before


def test_blocks_refuse_duplicates_too():
    import core.models.embedder  # noqa: F401

    name = BLOCKS.names()[0]
    with pytest.raises(DuplicateName):
        BLOCKS.register(name)(lambda channels, name=None: None)
