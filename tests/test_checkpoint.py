import json

import pytest
import torch

from core import checkpoint as ckpt
from core.checkpoint import CheckpointError
from core.config import ModelConfig
from core.io import atomic_write_text
from core.models.embedder import build_model


def _model(dim=16):
    return build_model(ModelConfig(embed_dim=dim))


def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    model = _model()
    ckpt.save_weights(tmp_path, model, 4, epoch=0)
    before = (tmp_path / ckpt.WEIGHTS).read_bytes()

    def crash(state, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt  # e.g. Ctrl-C during the write

    monkeypatch.setattr("safetensors.torch.save_file", crash)  # what core.io.atomic_save_safetensors calls
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_weights(tmp_path, _model(), 4, epoch=1)
    assert (tmp_path / ckpt.WEIGHTS).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (owner-only); the final file gets 0666 minus the umask, as a plain
    open() would, so a dashboard served by another user can read the run."""
    import os
    import stat

    ckpt.save_weights(tmp_path, _model(), 4, epoch=0)
    atomic_write_text(tmp_path / "note.json", "{}")
    umask = os.umask(0o022)
    os.umask(umask)
    for name in (ckpt.WEIGHTS, "note.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_resume_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / ckpt.RESUME
    torch.save({"epoch": 1, "hook": json.loads}, path)  # a function: loading it needs unpickling code
    with pytest.raises(CheckpointError, match="pickled code"):
        ckpt.load_resume(path)


def _run_dir(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg.model, num_classes=4)
    tiny_cfg.save(tmp_path / ckpt.CONFIG)
    ckpt.save_weights(tmp_path, model, 4, epoch=0)
    return model


def test_load_run_round_trip(tmp_path, tiny_cfg):
    model = _run_dir(tmp_path, tiny_cfg).eval()
    loaded, cfg = ckpt.load_run(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert cfg == tiny_cfg and not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_mismatched_config_names_the_keys(tmp_path, tiny_cfg):
    _run_dir(tmp_path, tiny_cfg)
    edited = tiny_cfg.with_overrides(["model.embed_dim=24"])
    edited.save(tmp_path / ckpt.CONFIG)
    with pytest.raises(CheckpointError, match=r"head\.proj\.weight.*checkpoint \(32, 256\) vs config \(24, 256\)"):
        ckpt.load_run(tmp_path)


def test_missing_and_damaged_files_say_what_is_wrong(tmp_path, tiny_cfg):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_run(tmp_path / "nope")
    _run_dir(tmp_path, tiny_cfg)
    (tmp_path / ckpt.WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_run(tmp_path)
    (tmp_path / ckpt.CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ckpt.load_run(tmp_path)


def test_unbuildable_config_is_a_checkpoint_error(tmp_path, tiny_cfg):
    _run_dir(tmp_path, tiny_cfg)
    tiny_cfg.with_overrides(["model.head=nope"]).save(tmp_path / ckpt.CONFIG)
    with pytest.raises(CheckpointError, match="cannot be built.*unknown head 'nope'"):
        ckpt.load_run(tmp_path)
