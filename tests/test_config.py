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
