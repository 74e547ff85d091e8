import pytest

from core.config import RunConfig


def test_yaml_json_round_trip(tmp_path):
    cfg = RunConfig.load("configs/shapes_gap.yaml").with_overrides(["train.lr=3e-4", "model.head_args.k=4"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    cfg.save(tmp_path / "config.json")
    again = RunConfig.load(tmp_path / "config.json")
    assert again == cfg


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="train.lrr"):
        RunConfig.from_dict({"train": {"lrr": 1}})
    with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
        RunConfig().with_overrides(["train.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        RunConfig().with_overrides(["train.lr"])
    with pytest.raises(ValueError, match=r"known here: .*\blr\b"):
        RunConfig().with_overrides(["train.learning_rate=0.1"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr must be a number"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.amp=1", "train.amp must be true or false"),
    ("data.resize=big", "data.resize must be an integer or null"),
])
def test_values_of_the_wrong_type_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        RunConfig().with_overrides([override])


def test_numbers_widen_and_null_is_kept_where_allowed():
    cfg = RunConfig().with_overrides(["train.lr=1", "data.resize=null", "train.backbone_lr=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.resize is None and cfg.train.backbone_lr is None


def test_unknown_head_option_names_the_valid_ones():
    from core.models.embedder import build_model

    cfg = RunConfig().with_overrides(["model.head=grouping", "model.head_args.num_group=3"])
    with pytest.raises(ValueError, match=r"model.head_args: head 'grouping' has no option num_group; .*num_groups"):
        build_model(cfg.model, num_classes=4)
    with pytest.raises(KeyError) as err:
        build_model(RunConfig().with_overrides(["model.head=foo"]).model)
    assert str(err.value).startswith("unknown head 'foo'; available:")  # printed without KeyError's quotes
