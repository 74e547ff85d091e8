"""The dashboard's plain logic, figures, demos, training jobs and Captum attribution (no Streamlit)."""
from __future__ import annotations

import io
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.evaluate import retrieval_metrics
from dashboard import figures, jobs, learn_demos, logic


def toy_embeddings(n_classes=6, per_class=7, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), labels


def test_retrieval_table_matches_core_metrics():
    emb, labels = toy_embeddings()
    table = logic.retrieval_table(emb, labels)
    core = retrieval_metrics(emb, labels)
    assert table.top1_correct.mean() == pytest.approx(core["recall@1"])
    assert np.nanmean(table.map_at_r) == pytest.approx(core["map_at_r"])
    assert np.nanmean(table.r_precision) == pytest.approx(core["r_precision"])
    assert (table.neighbours != np.arange(len(labels))[:, None]).all()  # never the query itself
    first = table.first_match_rank
    assert ((first == 1) == table.top1_correct).all()


def test_selection_metrics_split_selected_and_rest():
    emb, labels = toy_embeddings()
    table = logic.retrieval_table(emb, labels)
    selected = np.arange(10)
    out = logic.selection_metrics(table, selected)
    assert out["R@1"][0] == pytest.approx(table.top1_correct[:10].mean())
    assert out["R@1"][1] == pytest.approx(table.top1_correct[10:].mean())
    assert out["MAP@R"][0] == pytest.approx(np.mean(table.map_at_r[:10]))


def test_hardest_failures_are_wrong_and_sorted():
    emb, labels = toy_embeddings(noise=1.5)
    table = logic.retrieval_table(emb, labels)
    worst = logic.hardest_failures(table, 5)
    assert len(worst) and not table.top1_correct[worst].any()
    assert np.all(np.diff(table.r_precision[worst]) >= 0)
    true = logic.nearest_true_match(table, emb, labels, int(worst[0]))
    assert labels[true] == labels[worst[0]] and true != worst[0]
    rank = logic.rank_of(emb, int(worst[0]), true)
    if rank <= table.neighbours.shape[1]:
        assert rank == table.first_match_rank[worst[0]]
    assert rank > 1


def test_group_terms_sum_to_cosine_and_group_knn():
    emb, labels = toy_embeddings(dim=12)
    groups = [slice(0, 4), slice(4, 8), slice(8, 12)]
    terms = logic.group_terms(emb[0], emb[1], groups)
    assert terms.sum() == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    dom = logic.dominant_group(emb, logic.retrieval_table(emb, labels).neighbours[:, 0], groups)
    assert set(dom.tolist()) <= {0, 1, 2}
    ids, sims = logic.group_knn(emb, emb[0], groups[1], 5, exclude=0)
    assert 0 not in ids and np.all(np.diff(sims) <= 1e-7)


def test_jaccard_and_disagreements():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[1, 2, 3], [7, 8, 9]])
    from core.neighbours import topk_overlap
    assert topk_overlap(a, b, 3).tolist() == [1.0, 0.0]
    order = logic.disagreements(np.array([1, 1, 5]), np.array([1, 9, 4]), np.array([1.0, 0.2, 0.5]), 2)
    assert order.tolist() == [1, 2]


def test_stratified_sample_keeps_every_class():
    labels = np.repeat(np.arange(50), [1] + [999] * 49)
    keep = logic.stratified_sample(labels, 5000)
    assert len(keep) <= 5100 and set(labels[keep]) == set(range(50))
    assert logic.stratified_sample(labels[:100], 5000).tolist() == list(range(100))


def test_interleave_classes_round_robin():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert logic.interleave_classes(np.arange(6), labels).tolist() == [0, 3, 5, 1, 4, 2]


def test_selected_ids_decodes_every_customdata_form_and_geometry():
    event = {"selection": {"points": [{"customdata": 5}, {"customdata": [7]}, {"customdata": {"0": 9}}, {}],
                           "box": [], "lasso": []}}
    assert logic.selected_ids(event).tolist() == [5, 7, 9]
    coords = np.array([[0, 0], [1, 1], [2, 2], [5, 5]], dtype=float)
    box = {"selection": {"points": [], "box": [{"x": [0.5, 2.5], "y": [2.5, 0.5]}], "lasso": []}}
    assert logic.selected_ids(box, coords, use_geometry=True).tolist() == [1, 2]
    lasso = {"selection": {"points": [], "box": [], "lasso": [{"x": [-1, 1.5, 1.5, -1], "y": [-1, -1, 1.5, 1.5]}]}}
    assert logic.selected_ids(lasso, coords, use_geometry=True).tolist() == [0, 1]
    assert logic.selected_ids(None).tolist() == []


def png_bytes(size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_validate_upload_accepts_images_and_refuses_the_rest():
    assert logic.validate_upload(png_bytes()).size == (32, 24)
    with pytest.raises(logic.UploadError, match="not a readable image"):
        logic.validate_upload(b"hello, I am a text file", "notes.txt")
    with pytest.raises(logic.UploadError, match="limit is 10 MB"):
        logic.validate_upload(b"\0" * (logic.MAX_UPLOAD_BYTES + 1), "big.png")
    with pytest.raises(logic.UploadError, match="too large|enormous"):
        logic.validate_upload(png_bytes((13_000, 2)), "wide.png")
    with pytest.raises(logic.UploadError, match="not a readable image"):
        logic.validate_upload(png_bytes()[:60], "truncated.png")


def test_overlay_draws_the_map_where_it_is():
    """On a shapes image with its target's own mask as the map: the object takes the top of the colour scale and
    the background the bottom, blended with the image by `opacity`; a coarse map lands on its own cells; a signed
    map is red where positive and blue where negative; `scale` fixes the top of the scale. An overlay that
    ignored the map, or its place, fails here."""
    from matplotlib import colormaps

    from core.data import shapes

    data = shapes.load(shapes.ShapesSpec(test_per_class=2), "test")
    image, mask = data.images[0], data.masks[0]                       # 64×64×3 uint8, the target's 64×64 mask
    assert 0 < mask.mean() < 0.5
    colour = {v: np.asarray(colormaps["inferno"](v)[:3]) * 255 for v in (0.0, 0.5, 1.0)}
    solid = figures.overlay(image, mask.astype(np.float32), opacity=1.0).astype(float)
    assert solid.shape == image.shape and np.abs(solid[mask] - colour[1.0]).max() <= 1
    assert np.abs(solid[~mask] - colour[0.0]).max() <= 1
    half = figures.overlay(image, mask.astype(np.float32), opacity=0.5).astype(float)
    expected = 0.5 * image + 0.5 * np.where(mask[..., None], colour[1.0], colour[0.0])
    assert np.abs(half - expected).max() <= 1
    turned = figures.overlay(image, 1.0 - mask.astype(np.float32), opacity=1.0).astype(float)
    assert np.abs(turned[mask] - colour[0.0]).max() <= 1                  # the map turned around: the object dark
    cell = np.zeros((8, 8), np.float32)
    cell[2, 5] = 1.0                                                      # one hot cell of a coarse 8×8 map
    hot = figures.overlay(np.zeros_like(image), cell, opacity=1.0).astype(float).sum(-1)
    row, col = np.unravel_index(hot.argmax(), hot.shape)
    assert 16 <= row < 24 and 40 <= col < 48                              # drawn on that cell's 8×8 pixels
    signed = figures.overlay(image, np.where(mask, 1.0, -1.0).astype(np.float32), opacity=1.0, signed=True)
    red, blue = signed[..., 0].astype(int), signed[..., 2].astype(int)
    assert (red[mask] > blue[mask]).all() and (blue[~mask] > red[~mask]).all()
    scaled = figures.overlay(image, 0.5 * mask.astype(np.float32), opacity=1.0, scale=1.0).astype(float)
    assert np.abs(scaled[mask] - colour[0.5]).max() <= 1                  # half the fixed scale, not its top


def test_figures_map():
    img = np.zeros((64, 64, 3), np.uint8)
    fig = figures.embedding_map(np.random.rand(5, 2), np.arange(5), list("aabbc"), list("vwxyz"))
    assert [t.type for t in fig.data] == ["scattergl"] * 3
    assert list(fig.data[0].customdata) == [0, 1]
    picker = figures.patch_picker(img, 4, 4, (1, 2))
    assert len(picker.data[0].x) == 16


def test_learn_demos():
    feats = np.random.default_rng(0).normal(size=(8, 6, 6)).astype(np.float32)
    protos = learn_demos.kmeans(learn_demos.unit(feats.reshape(8, -1), 0).T, 3)
    keep, plan = learn_demos.gsp_transport(feats, protos, mu=1.0)
    assert np.allclose(keep, 1.0, atol=1e-4)  # μ = 1: GSP is average pooling
    keep, plan = learn_demos.gsp_transport(feats, protos, mu=0.3)
    assert keep.mean() == pytest.approx(1.0, abs=1e-3) and keep.min() >= -1e-5 and plan.shape == (3, 6, 6)
    maps = learn_demos.grouping_attention(feats, protos)
    assert np.allclose(maps.reshape(3, -1).sum(1), 1.0)
    demo = learn_demos.csa_demo(feats, 36, 2, 3)
    assert demo["rebuilt"].sum() == pytest.approx(1.0, abs=1e-5) and 0 <= demo["agreement"] <= 1
    assert learn_demos.pixel_features(np.random.rand(3, 64, 64)).shape == (6, 8, 8)
    payload = {"epochs": [{"epoch": 0, "learners": [64]}, {"epoch": 1, "learners": [40, 24]}],
               "events": [{"applied_epoch": 1}]}
    assert learn_demos.dsl_state_at(payload, 0)["events"] == []
    assert learn_demos.dsl_state_at(payload, 1)["learners"] == [40, 24]


def test_training_job_progress_and_cancel(tmp_path):
    # the child reports as `python -m core train` does: a ProgressLog line in RUN_DIR/progress.jsonl
    script = ("import sys, time\n"
              "from core.progress import ProgressLog\n"
              "ProgressLog(sys.argv[1])(8, 16, 'epoch 2/4 loss 0.5')\n"
              "try:\n    print('READY'.lower(), flush=True)\n    time.sleep(60)\n"
              "except KeyboardInterrupt:\n    print('interrupted'); sys.exit(130)\n")
    job = jobs.TrainJob("fake", tmp_path / "fake", [sys.executable, "-c", script,
                                                    str(tmp_path / "fake" / "progress.jsonl")]).start()
    deadline = time.time() + 20
    while "ready" not in job.log_tail().splitlines() and time.time() < deadline:  # handler installed
        time.sleep(0.1)
    assert job.status == "running"
    fraction, message = job.progress()
    assert fraction == pytest.approx((1 + 0.5) / 4) and "epoch 2/4" in message
    job.cancel(grace=10)
    assert job.status == "cancelled" and job.returncode == 130
    assert "interrupted" in job.log_tail()
    assert jobs.validate_name("good_name-1") is None and jobs.validate_name("../escape")
    cmd = jobs.train_command("configs/shapes_gap.yaml", "out", 2, 1, ["train.lr=0.01"])
    assert cmd[1:4] == ["-m", "core", "train"] and "train.lr=0.01" in cmd


def test_similarity_attribution_completeness():
    from core.attribution import SimilarityToReference, similarity_attribution, why_not_true_match
    from core.config import ModelConfig
    from core.models.embedder import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="convnet", head="gap", embed_dim=16)).eval()
    x, ref = torch.rand(3, 32, 32), torch.randn(16)
    ig = similarity_attribution(model, x, ref, "integrated_gradients", n_steps=32)
    wrapped = SimilarityToReference(model, ref)
    with torch.no_grad():
        gain = float(wrapped(x[None]) - wrapped(torch.zeros(1, 3, 32, 32)))
    assert ig.shape == (32, 32) and ig.sum() == pytest.approx(gain, abs=0.05)
    cam = similarity_attribution(model, x, ref, "gradcam")
    assert cam.shape == (4, 4) and np.isfinite(cam).all()
    diff = why_not_true_match(model, x, ref, torch.randn(16))
    assert np.allclose(diff["difference"], diff["to_neighbour"] - diff["to_true_match"])
    with torch.inference_mode():  # the caller's inference mode must not break attribution
        assert np.isfinite(similarity_attribution(model, x, ref, "gradcam")).all()


def test_different_items_allows_a_renaming_of_classes_and_names_the_first_mismatch():
    """Compare's check on whole columns: labels equal up to a one-to-one renaming pass; a class split or merged in
    the other run, or another file at the same position, is refused with the first item where it shows."""
    from core.item_store import ItemStore, items_table

    def store(paths):
        return ItemStore(items_table([{"class_name": "c", "path": p} for p in paths]))

    none = store([None] * 4)
    assert logic.different_items([0, 0, 1, 1], [5, 5, 7, 7], none, none) is None
    assert "first at item 3" in logic.different_items([0, 0, 1, 1], [5, 5, 7, 5], none, none)   # 1 -> 7 and 5
    assert "first at item 2" in logic.different_items([0, 0, 1, 1], [5, 5, 5, 5], none, none)   # merged
    assert "first at item 3" in logic.different_items([0, 0, 1, 2], [5, 5, 6, 6], none, none)   # 1 and 2 -> 6
    assert "4 and 3" in logic.different_items([0, 0, 1, 1], [0, 0, 1], none, store([None] * 3))
    a, b = store(["/a/x.png", "/b/y.png", "z.png"]), store(["/c/x.png", "/b/q.png", "z.png"])
    assert logic.different_items([0, 1, 2], [0, 1, 2], a, b) == "item 1 is y.png in one run and q.png in the other"
