"""`python -m core import-model`: a researcher's own network (code + weights) and a folder of images become a run that
`load_run` rebuilds and every model-agnostic explainer explains (issue 24).

Real input: a torchvision ResNet-18 whose fc is replaced by Linear(512, 128), random weights saved as safetensors, and
procedural shapes images written as PNG files into class folders (64 px, so the run's --size 64 leaves them as they
are and the expected embeddings can be computed from the files directly).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import checkpoint as ckpt
from core.importer import ImportRunError
from core.import_model import import_model
from core.models.backbones import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
LAB_MODEL = '''
import torchvision
from torch import nn


def build():
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Linear(512, 128)
    return net
'''
BAD_MODELS = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, returns):
        super().__init__()
        self.returns = returns
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        emb = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return {"tuple": (emb, emb), "batch_mean": emb.mean(0, keepdim=True), "fine": emb}[self.returns]


def tuple_out():
    return Tiny("tuple")


def batch_mean():
    return Tiny("batch_mean")


def not_module():
    return Tiny


def fine():
    return Tiny("fine")
'''


def write_shapes_folder(folder: Path, classes: int = 6, per_class: int = 4) -> Path:
    """Class folders of shapes PNGs (64 px): the first half of the sorted classes is the train part, the rest test."""
    from PIL import Image

    from core.data import shapes

    data = shapes.load(shapes.ShapesSpec(test_per_class=per_class), "test")
    for label in sorted(set(data.labels.tolist()))[:classes]:
        for i in np.flatnonzero(data.labels == label)[:per_class]:
            name = data.annotation(int(i))["class_name"].replace(" ", "_")
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i]).save(folder / name / f"{i:05d}.png")
    return folder


def save_weights(path: Path, seed: int, **layers) -> Path:
    from safetensors.torch import save_file

    import lab_model
    torch.manual_seed(seed)
    net = lab_model.build()
    for name, layer in layers.items():
        setattr(net, name, layer)
    save_file(net.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The researcher's folder: lab_model.py (+ bad_models.py), weights of two seeds, images; on sys.path."""
    folder = tmp_path_factory.mktemp("lab")
    (folder / "lab_model.py").write_text(LAB_MODEL)
    (folder / "bad_models.py").write_text(BAD_MODELS)
    (folder / "broken_model.py").write_text("import a_package_that_is_not_installed\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        write_shapes_folder(folder / "images")
        yield {"folder": folder, "images": folder / "images", "w0": save_weights(folder / "w0.safetensors", 0),
               "w1": save_weights(folder / "w1.safetensors", 1)}
        for name in ("lab_model", "bad_models", "broken_model"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def own_run(lab):
    """The README's command, through the CLI: --factory lab_model:build on the test part at --size 64."""
    from core.__main__ import main

    out = lab["folder"] / "runs" / "lab_resnet18"
    assert main(["import-model", "--factory", "lab_model:build", "--weights", str(lab["w0"]), "--images",
                 str(lab["images"]), "--out", str(out), "--size", str(SIZE), "--mean", *map(str, IMAGENET_MEAN),
                 "--std", *map(str, IMAGENET_STD)]) == 0
    return out


def expected_embeddings(paths: list[str], weights: Path) -> torch.Tensor:
    """The network's own output on the files, preprocessed by hand: /255, ImageNet mean/std (64 px: no resize)."""
    from PIL import Image
    from safetensors.torch import load_file

    import lab_model
    net = lab_model.build().eval()
    net.load_state_dict(load_file(str(weights)))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                     for p in paths])
    with torch.no_grad():
        out = net((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return F.normalize(out, dim=-1)


def test_the_run_holds_the_models_own_embeddings_of_the_test_images(own_run, lab):
    from core.evaluate import all_metrics

    art = own_run / ckpt.ARTIFACTS
    emb, labels = np.load(art / "embeddings.npy"), np.load(art / "labels.npy")
    items = json.loads((art / "items.json").read_text())
    # the test part: the second half of the sorted classes (unseen classes), 3 × 4 images
    assert len(items) == 12 and {it["split"] for it in items} == {"test"}
    assert sorted({it["class_name"] for it in items}) == sorted(p.name for p in lab["images"].iterdir())[3:]
    assert np.allclose(emb, expected_embeddings([it["path"] for it in items], lab["w0"]).numpy(), atol=1e-5)
    metrics = json.loads((own_run / ckpt.METRICS).read_text())
    assert metrics["test"] == pytest.approx(all_metrics(emb, labels))
    cfg = ckpt.load_config(own_run)
    spec = cfg.model.user_model
    assert spec["factory"] == "lab_model:build" and spec["feature_layer"] == "layer4"
    assert spec["weights"]["file"] == str(lab["w0"].resolve()) and len(spec["weights"]["sha256"]) == 64
    assert cfg.data.name == "folder" and cfg.data.image_size == SIZE and cfg.model.embed_dim == 128
    # load_run rebuilds it from the run folder alone (the weights are copied in) and embeds the same
    model, _ = ckpt.load_run(own_run)
    from core.artifacts import item_images
    pixels = torch.from_numpy(np.stack([item_images(own_run)(i) for i in range(len(items))]))
    with torch.no_grad():
        assert np.allclose(model(pixels).numpy(), emb, atol=1e-5)
    assert np.allclose(model.explain(pixels).embedding.numpy(), emb, atol=1e-5)
    # an upload (the dashboard's upload_input: the run's test-time transform) of another size is squashed, not cropped
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from core.data import build_transform
    wide = Image.open(items[0]["path"]).convert("RGB").resize((96, 64))
    upload = build_transform(cfg.data, train=False)(wide)
    squashed = TF.resize(TF.to_dtype(TF.to_image(wide), torch.float32, scale=True), [SIZE, SIZE], antialias=True)
    assert upload.shape == (3, SIZE, SIZE) and torch.allclose(upload, squashed)


def test_arch_and_factory_of_the_same_network_and_weights_give_the_same_run(own_run, lab, tmp_path):
    out = tmp_path / "arch_run"
    import_model(out, lab["images"], arch="torchvision:resnet18", embed_dim=128, weights=lab["w0"], size=SIZE)
    assert np.allclose(np.load(out / ckpt.ARTIFACTS / "embeddings.npy"),
                       np.load(own_run / ckpt.ARTIFACTS / "embeddings.npy"), atol=1e-6)
    assert ckpt.load_config(out).model.user_model["arch"] == "torchvision:resnet18"
    model, _ = ckpt.load_run(out)
    assert model.net.fc.out_features == 128


def test_every_model_agnostic_explainer_explains_it(own_run):
    from core.explain import explain, explainers, position_embeddings

    model, cfg = ckpt.load_run(own_run)
    assert {"gradcam", "integrated_gradients", "why_neighbour", "similarity_correspondence",
            "patch_correspondence"} <= {e.name for e in explainers(model=model)}
    assert "cross_attention" not in {e.name for e in explainers(model=model)}    # no trained CIA branch
    from core.artifacts import item_images
    image = item_images(own_run)
    query, neighbour, true_match = (torch.from_numpy(image(i)) for i in (0, 5, 1))
    assert explain(model, query, neighbour, explainer="gradcam").maps["attribution"].shape == (2, 2)   # layer4 at 64 px
    ig = explain(model, query, neighbour, explainer="integrated_gradients", n_steps=8).maps["attribution"]
    assert ig.shape == (SIZE, SIZE) and np.isfinite(ig).all() and np.abs(ig).sum() > 0
    why = explain(model, query, neighbour, explainer="why_neighbour", true_match=true_match).maps
    assert np.allclose(why["difference"], why["to_neighbour"] - why["to_true_match"])
    cross = explain(model, query, neighbour, explainer="similarity_correspondence")
    assert cross.notes["source"] == "similarity" and cross.maps["a_in_b"].shape == (1, 2, 2)
    assert np.allclose(cross.maps["a_in_b"].sum((1, 2)), 1, atol=1e-5)
    assert "each position" in cross.describe("a_in_b")                  # per-position embeddings, not raw features
    lands = explain(model, query, neighbour, explainer="patch_correspondence", row=1, col=0).maps["lands"]
    assert lands.shape == (2, 2) and np.isclose(lands.sum(), 1, atol=1e-5)
    # the per-position embeddings are the network's own tail (pool + fc) applied to each position's feature
    with torch.no_grad():
        features = model.forward_features(query[None])
        positions, _ = position_embeddings(model, features)
        direct = F.normalize(model.net.fc(features[0].flatten(1).T), dim=-1).T.reshape(positions.shape[1:])
    assert features.shape == (1, 512, 2, 2) and torch.allclose(positions[0], direct, atol=1e-5)


def test_gradcam_reads_the_feature_layer_and_moves_when_the_weights_change(own_run, lab, tmp_path):
    from captum.attr import LayerGradCam

    from core.artifacts import item_images
    from core.explain import explain

    model, _ = ckpt.load_run(own_run)
    image = item_images(own_run)
    query, reference = torch.from_numpy(image(0)), torch.from_numpy(image(5))
    ours = explain(model, query, reference, explainer="gradcam").maps["attribution"]
    # Captum on the bare network's layer4, attributing the cosine to the reference's embedding
    net = model.net
    ref = expected_embeddings([json.loads((own_run / "artifacts" / "items.json").read_text())[5]["path"]], lab["w0"])[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    direct = LayerGradCam(lambda x: F.normalize(net((x - mean) / std), dim=-1) @ ref, net.layer4).attribute(query[None])
    assert np.allclose(ours, direct[0, 0].detach().numpy(), atol=1e-5)
    # the same network with other weights: other embeddings, another map
    other = tmp_path / "other_weights"
    import_model(other, lab["images"], factory="lab_model:build", weights=lab["w1"], size=SIZE)
    model1, _ = ckpt.load_run(other)
    theirs = explain(model1, query, reference, explainer="gradcam").maps["attribution"]
    assert not np.allclose(ours, theirs, atol=1e-3)
    assert not np.allclose(np.load(other / "artifacts/embeddings.npy"), np.load(own_run / "artifacts/embeddings.npy"))


def test_a_chosen_feature_layer_every_image_and_a_prefixed_torch_state_dict(lab, tmp_path):
    """--feature-layer layer3 (a 4×4 grid at 64 px), --split all, and weights saved with torch.save under
    'state_dict' with DataParallel's 'module.' prefix (--strip-prefix module.)."""
    from safetensors.torch import load_file

    from core.explain import explain

    state = {"state_dict": {f"module.{k}": v for k, v in load_file(str(lab["w0"])).items()}}
    torch.save(state, tmp_path / "w.pt")
    out = tmp_path / "layer3_all"
    with pytest.raises(ImportRunError, match="pass --strip-prefix module."):
        import_model(out, lab["images"], factory="lab_model:build", weights=tmp_path / "w.pt", size=SIZE)
    import_model(out, lab["images"], factory="lab_model:build", weights=tmp_path / "w.pt", strip_prefix="module.",
                 feature_layer="layer3", split="all", size=SIZE)
    items = json.loads((out / ckpt.ARTIFACTS / "items.json").read_text())
    assert len(items) == 24 and {it["split"] for it in items} == {"train", "test"}
    emb = np.load(out / ckpt.ARTIFACTS / "embeddings.npy")
    assert np.allclose(emb, expected_embeddings([it["path"] for it in items], lab["w0"]).numpy(), atol=1e-5)
    model, _ = ckpt.load_run(out)
    from core.artifacts import item_images
    image = item_images(out)
    assert items[0]["split"] == "train" and image(0).shape == (3, SIZE, SIZE)   # the train part reads as well
    assert explain(model, torch.from_numpy(image(0)), torch.from_numpy(image(20)),
                   explainer="gradcam").maps["attribution"].shape == (4, 4)


def test_a_csv_of_images_is_read_as_data_name_csv(own_run, lab, tmp_path):
    """path,label,split rows (relative paths, another label column): the rows marked test are embedded."""
    paths = sorted(lab["images"].rglob("*.png"))
    rows = ["file_label,path,split"] + [f"{p.parent.name},images/{p.parent.name}/{p.name},{'test' if i % 2 else 'train'}"
                                        for i, p in enumerate(paths)]
    (lab["folder"] / "images.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "from_csv"
    import_model(out, lab["folder"] / "images.csv", factory="lab_model:build", weights=lab["w0"], size=SIZE,
                 label_column="file_label")
    items = json.loads((out / ckpt.ARTIFACTS / "items.json").read_text())
    assert [it["path"] for it in items] == [str(p) for i, p in enumerate(paths) if i % 2]
    assert ckpt.load_config(out).data.name == "csv"
    assert np.allclose(np.load(out / ckpt.ARTIFACTS / "embeddings.npy"),
                       expected_embeddings([it["path"] for it in items], lab["w0"]).numpy(), atol=1e-5)


def test_teaching_mode_never_imports_the_code(own_run):
    from core.importer import NoModelError

    sys.modules.pop("lab_model", None)
    with pytest.raises(NoModelError, match="teaching mode never imports code"):
        ckpt.load_run(own_run, allow_code=False)
    assert "lab_model" not in sys.modules


def test_a_run_whose_factory_is_gone_says_where_it_was(own_run, tmp_path, monkeypatch):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(own_run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["model"]["user_model"]["factory"] = "lab_model_elsewhere:build"
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointError, match=r"no module 'lab_model_elsewhere'.*PYTHONPATH.*lab_model\.py"):
        ckpt.load_run(moved)


@pytest.mark.parametrize("case, says", [
    ("no_module", ["no module 'no_such_lab_module' on the Python path", "PYTHONPATH"]),
    ("import_error", ["importing it raised ModuleNotFoundError", "a_package_that_is_not_installed",
                      "broken_model.py line 1"]),
    ("no_function", ["has no function 'buld'", "it defines: build"]),
    ("not_module", ["returned a type, not a torch.nn.Module"]),
    ("tuple", ["returned a tuple of 2, not a tensor", "return emb"]),
    ("batch", ["returned shape (1, 16) for a batch of 2 images", "B×D = 2×D"]),
    ("weights", ["does not match the network lab_model:build builds", "fc.weight (checkpoint (64, 512) vs network (128, 512))"]),
    ("pickled", ["weights_only=True", "pickled code", "save_file(model.state_dict()"]),
    ("feature_layer", ["--feature-layer 'layer9' is not a module of the network", "layer4"]),
    ("timm", ["timm is not installed", "--factory"]),
])
def test_bad_input_says_what_is_wrong_and_writes_nothing(lab, tmp_path, case, says):
    from torch import nn

    kwargs = {"factory": "lab_model:build", "weights": lab["w0"]}
    if case == "no_module":
        kwargs["factory"] = "no_such_lab_module:build"
    elif case == "import_error":
        kwargs["factory"] = "broken_model:build"
    elif case == "no_function":
        kwargs["factory"] = "lab_model:buld"
    elif case in ("not_module", "tuple", "batch"):
        kwargs = {"factory": {"not_module": "bad_models:not_module", "tuple": "bad_models:tuple_out",
                              "batch": "bad_models:batch_mean"}[case]}
    elif case == "weights":
        kwargs["weights"] = save_weights(tmp_path / "w64.safetensors", 0, fc=nn.Linear(512, 64))
    elif case == "pickled":
        import lab_model
        torch.save(lab_model.build(), tmp_path / "whole_model.pt")
        kwargs["weights"] = tmp_path / "whole_model.pt"
    elif case == "feature_layer":
        kwargs["feature_layer"] = "layer9"
    elif case == "timm":
        if importlib.util.find_spec("timm"):
            pytest.skip("timm is installed here: the message for its absence cannot be seen")
        kwargs = {"arch": "timm:resnet18", "embed_dim": 128}
    out = tmp_path / "runs" / "bad"
    with pytest.raises(ImportRunError) as err:
        import_model(out, lab["images"], size=SIZE, **kwargs)
    for phrase in says:
        assert phrase in str(err.value), str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_cli_reports_bad_input_with_exit_2(lab, tmp_path, capsys):
    from core.__main__ import main

    out = tmp_path / "r"
    assert main(["import-model", "--factory", "bad_models:batch_mean", "--images", str(lab["images"]),
                 "--out", str(out), "--size", str(SIZE)]) == 2
    assert "for a batch of 2 images" in capsys.readouterr().err and not out.exists()
    # without --weights the network keeps the weights its factory gave it
    assert main(["import-model", "--factory", "bad_models:fine", "--images", str(lab["images"]),
                 "--out", str(out), "--size", str(SIZE)]) == 0
    assert "no --weights" in capsys.readouterr().err
    model, _ = ckpt.load_run(out)
    assert model.feature_layer == "conv"   # the only B×C×h×w output of that network


@pytest.mark.slow  # opens four pages twice under AppTest (~1 min)
@pytest.mark.parametrize("mode", ["full", "demo"])
def test_the_dashboard_explains_it_in_full_mode_and_shows_embeddings_only_when_teaching(own_run, mode, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_pages import texts

    monkeypatch.setenv("METRICLENS_MODE", mode)
    monkeypatch.setenv("METRICLENS_RUNS", str(own_run.parent))
    monkeypatch.setenv("METRICLENS_AUTO_UMAP", "0")
    sys.modules.pop("lab_model", None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run"] = str(own_run.resolve())
    at.run()
    assert any("lab_resnet18 · R@1" in option and "user_model/lab_model:build" in option
               for option in at.selectbox(key="w_run").options)
    shown = {}
    for page in ("explore", "retrieval", "attention", "cross"):
        at.switch_page(f"dashboard/pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        shown[page] = texts(at)
    if mode == "full":   # the model is rebuilt from lab_model.py and every explainer is drawn
        assert "What moved the similarity (Captum)" in shown["attention"]
        assert "Your own network returns embeddings only" in shown["attention"]   # not "its head pools ... alike"
        assert "Source: similarity" in shown["cross"]
        assert "lab_model" in sys.modules
    else:                # listed and explored, never imported: the pages that need the network say why
        for page in ("attention", "cross"):
            assert "teaching mode never imports code from a run" in shown[page], shown[page]
        assert "lab_model" not in sys.modules


def test_a_factory_that_cannot_be_imported_leaves_the_model_free_pages_on_its_embeddings(own_run, lab, tmp_path,
                                                                                         monkeypatch):
    """Full mode, but the dashboard was started where the factory's code cannot be imported (no PYTHONPATH): Explore,
    Retrieval and Compare open the run's embeddings (and images) with a warning naming PYTHONPATH and the factory's
    folder; Attention says it needs the model, with the same fix; nothing shows a traceback."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_pages import inject, texts

    run = tmp_path / "runs" / "lab_elsewhere"           # a copy: the model cache holds own_run's model already
    shutil.copytree(own_run, run)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != lab["folder"].resolve()])
    monkeypatch.delitem(sys.modules, "lab_model", raising=False)
    monkeypatch.setenv("METRICLENS_MODE", "full")
    monkeypatch.setenv("METRICLENS_RUNS", os.pathsep.join([str(run.parent), str(own_run.parent)]))
    monkeypatch.setenv("METRICLENS_AUTO_UMAP", "0")
    fix = f"PYTHONPATH={lab['folder']} streamlit run app.py"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run"] = str(run.resolve())
    at.session_state["compare_run"] = str(own_run.resolve())
    at.run()
    for page in ("explore", "retrieval", "compare"):
        if page != "explore":
            at.switch_page(f"dashboard/pages/{page}.py").run()
        assert not at.exception and not at.error, (page, [e.value for e in at.exception], [e.value for e in at.error])
        warned = " ".join(w.value for w in at.warning)
        assert "embeddings only" in warned and "no module 'lab_model'" in warned and fix in warned, (page, warned)
    at.switch_page("dashboard/pages/explore.py").run()
    inject(at, [3])
    assert "Nearest neighbours of #3" in texts(at) and at.get("image")   # its images still come from its folder
    assert "explore_to_attention" not in {b.key for b in at.button}
    at.switch_page("dashboard/pages/attention.py").run()
    assert not at.exception
    said = " ".join(e.value for e in at.error)
    assert "The Attention page needs lab_elsewhere's own model" in said, said
    assert fix in said and "lab_model" not in sys.modules
