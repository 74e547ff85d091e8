"""The real-photo demo that ships: a small Caltech-101 subset (CC BY 4.0) and its runs' configuration.

    python -m benchmarks.photo_demo               # write checkpoints/photos/caltech101_demo/ from ../shared/data/caltech101
    python -m benchmarks.make_checkpoints --photos   # train the shipped runs on it (one per method + the frozen reference)

The subset: 30 train and 20 unseen test classes of Caltech-101 (its own split), the first 24 photos of each in file
order, scaled to at most 192 px on the longer side (JPEG quality 80), with `labels.csv` (path, label, split), the
credit and the licence beside them. Each run is configs/real_<method>.yaml as `python -m core train --frozen-backbone`
runs it (the frozen ImageNet EfficientNet-Lite0, features cached once, its mirror image as a second view), at 224 px.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from benchmarks.common import ROOT
from core.config import RunConfig
from core.train_features import frozen_backbone_overrides

SOURCE = ROOT.parent / "shared" / "data" / "caltech101"
PHOTOS = ROOT / "checkpoints" / "photos" / "caltech101_demo"
LABELS = PHOTOS / "labels.csv"
# Faces / Faces_easy (photographs of people, and duplicates of each other) left out
TRAIN = ["Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant", "bonsai", "brain", "buddha", "butterfly",
         "camera", "car_side", "chair", "chandelier", "crab", "crayfish", "cup", "dalmatian", "dolphin", "dragonfly",
         "electric_guitar", "elephant", "emu", "ewer", "ferry", "flamingo", "grand_piano", "hawksbill", "hedgehog",
         "helicopter"]
TEST = ["ibis", "kangaroo", "ketch", "lamp", "laptop", "llama", "lotus", "menorah", "minaret", "pagoda", "panda",
        "pizza", "revolver", "rooster", "schooner", "starfish", "stop_sign", "sunflower", "umbrella", "water_lilly"]
PER_CLASS, LONGEST, QUALITY = 24, 192, 80
IMAGE_SIZE, VIEWS = 224, 2

CREDIT = """# Caltech-101 demo subset (real photographs for the shipped runs)

50 of the 101 Caltech-101 object categories: 30 train classes and 20 unseen test classes (Caltech-101's own
split as in `../shared/data/caltech101`: class ids 0-50 train, 51-100 test), the first {per_class} photos of each
in file order, scaled to at most {longest} px on the longer side and saved as JPEG quality {quality}.
`labels.csv` lists every photo with its class and split. Made by `python -m benchmarks.photo_demo`.

Not a run directory (no config.json): the dashboard does not list it; the runs `checkpoints/caltech_<method>` read
their photos from here.

**Credit:** L. Fei-Fei, R. Fergus, P. Perona, "Learning generative visual models from few training examples",
CVPR 2004 Workshop on Generative-Model Based Vision. Caltech-101, https://data.caltech.edu/records/mzrjq-6wc02.

**Licence:** Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/ (as the Caltech data repository lists Caltech-101). Changes made
here: a subset of the images, scaled down and re-encoded as JPEG.
"""


def make_subset(source: Path = SOURCE, out: Path = PHOTOS) -> Path:
    """Write the subset (photos, labels.csv, README.md with credit and licence) from the full data set."""
    from PIL import Image

    with open(source / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split_of = {**{c: "train" for c in TRAIN}, **{c: "test" for c in TEST}}
    shutil.rmtree(out / "images", ignore_errors=True)
    kept, seen = [], {}
    for row in rows:
        name = row["class_name"]
        if name not in split_of or seen.get(name, 0) >= PER_CLASS:
            continue
        if row["dml_split"] != split_of[name]:
            raise SystemExit(f"{name} is in Caltech-101's {row['dml_split']} split, not {split_of[name]}")
        seen[name] = seen.get(name, 0) + 1
        target = out / "images" / name / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source / row["path"]) as img:
            img = img.convert("RGB")
            img.thumbnail((LONGEST, LONGEST), Image.LANCZOS)
            img.save(target, quality=QUALITY)
        kept.append({"path": str(target.relative_to(out)), "label": name, "split": split_of[name]})
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(kept)
    (out / "README.md").write_text(CREDIT.format(per_class=PER_CLASS, longest=LONGEST, quality=QUALITY))
    return out


def run_config(method: str) -> RunConfig:
    """configs/real_<method>.yaml on the demo photos, as `python -m core train --frozen-backbone` makes it."""
    cfg = RunConfig.load(ROOT / "configs" / f"real_{method}.yaml").with_overrides([
        "data.name=csv", f"data.csv={LABELS.relative_to(ROOT)}", "data.root=null", "data.csv_label_column=label",
        "data.csv_split_column=split", f"data.image_size={IMAGE_SIZE}", "train.num_workers=0",
        f"train.cached_views={VIEWS}", "train.device=cpu",
        # the demo ships trained heads (their maps are what it shows): on its 6 validation classes the frozen
        # features already retrieve almost perfectly, so the untrained start would be kept (its random
        # attention maps with it)
        "train.eval_start=false"])
    # CSA stays after stage5 (its paper's place, 112 channels): on the last stage's 1280 channels its block
    # alone would take more of the repository than the demo photos
    cfg = cfg.with_overrides(frozen_backbone_overrides(cfg, move_blocks=False))
    cfg.name = f"caltech_{method}"
    cfg.description = (cfg.description.replace("fine-tuned", "frozen")
                       + "; head trained on cached features of the Caltech-101 demo photos")
    return cfg


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    out = make_subset()
    files = list((out / "images").rglob("*.jpg"))
    print(f"{len(files)} photos, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
