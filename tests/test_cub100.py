"""Real data: ../shared/data/cub100 (skipped when the folder is absent)."""
import csv
from pathlib import Path

import pytest

from core.config import RunConfig

CUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
pytestmark = pytest.mark.skipif(not (CUB / "labels.csv").exists(), reason="../shared/data/cub100 not present")


def test_cub100_config_gives_the_standard_split():
    from core.data import build_datasets
    cfg = RunConfig.load("configs/cub100_frozen_effnet.yaml")
    splits = build_datasets(cfg.data)
    assert (len(splits.train), len(splits.test)) == (2949, 2953) and splits.val is None
    assert len(set(splits.train.labels)) == len(set(splits.test.labels)) == 50
    assert set(splits.train.labels).isdisjoint(splits.test.labels)
    image, _, _ = splits.test[0]
    assert image.shape == (3, 224, 224)


@pytest.mark.slow
def test_frozen_imagenet_effnet_separates_unseen_birds(tmp_path):
    """Frozen EfficientNet-Lite0 on 8 unseen species (10 images each): ImageNet features already
    retrieve the right species; a randomly initialised network does not."""
    from core.data import build_datasets
    from core.evaluate import embed_dataset, retrieval_metrics
    from core.models.embedder import build_model

    rows = list(csv.DictReader(open(CUB / "labels.csv")))
    species = sorted({r["class_name"] for r in rows if r["dml_split"] == "test"})[:8]
    subset = tmp_path / "subset.csv"
    with open(subset, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "class_name", "dml_split"])
        writer.writeheader()
        taken: dict[str, int] = {}
        for r in rows:
            if r["class_name"] in species and taken.get(r["class_name"], 0) < 10:
                taken[r["class_name"]] = taken.get(r["class_name"], 0) + 1
                writer.writerow({"path": str(CUB / r["path"]), "class_name": r["class_name"], "dml_split": "test"})
        writer.writerow({"path": str(CUB / rows[0]["path"]), "class_name": "train-only", "dml_split": "train"})
    cfg = RunConfig.load("configs/cub100_frozen_effnet.yaml").with_overrides([f"data.csv={subset}"])
    test = build_datasets(cfg.data).test
    scores = {}
    for pretrained in (True, False):
        model = build_model(cfg.model.__class__(**{**cfg.model.__dict__, "pretrained": pretrained}))
        emb, labels = embed_dataset(model, test, batch_size=40)
        scores[pretrained] = retrieval_metrics(emb, labels)["recall@1"]
    assert scores[True] > 0.8 and scores[True] > scores[False] + 0.3, scores
