"""Small greyscale images trained from scratch: the README's first-result command for them, timed.

    python -m benchmarks.small_images            # write the glyph folder once, train the command, tabulate

The data: a nested greyscale character set like Omniglot's layout (root/<alphabet>/<character>/<image>.png):
the letters of several scripts drawn from the DejaVu Sans font, each image a random size, rotation, stroke and
position (48 px), 20 per character; the first half of the sorted characters train, the rest test. The command is
the README's: configs/shapes_grouping.yaml (attention maps to show) on the folder, capped to a first result.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RUNS, md_table, write_results
from core.run_dir import METRICS

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SCRIPTS = {"Greek": (0x3B1, 0x3C9), "Cyrillic": (0x430, 0x44F), "Armenian": (0x561, 0x586), "Georgian": (0x10D0, 0x10F0),
           "Latin": (0x61, 0x7A), "Hebrew": (0x5D0, 0x5EA)}
PER_CHARACTER, SIZE = 20, 48
ROOT = RUNS / "small_images" / "glyphs"
COMMAND = ["--config", "configs/shapes_grouping.yaml", "data.name=folder", "train.epochs=4", "data.max_per_class=10"]


def make_glyphs(root: Path = ROOT) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    if root.exists():
        return root
    rng = np.random.default_rng(0)
    for script, (first, last) in SCRIPTS.items():
        for cp in range(first, last + 1):
            folder = root / script / f"character{cp - first + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(PER_CHARACTER):
                font = ImageFont.truetype(str(FONT), int(rng.integers(22, 34)))
                canvas = Image.new("L", (2 * SIZE, 2 * SIZE), 255)
                ImageDraw.Draw(canvas).text((SIZE, SIZE), chr(cp), fill=0, font=font, anchor="mm",
                                            stroke_width=int(rng.integers(0, 2)))
                canvas = canvas.rotate(float(rng.uniform(-15, 15)), fillcolor=255)
                dx, dy = rng.integers(-6, 7, 2)
                box = (SIZE // 2 + dx, SIZE // 2 + dy, SIZE // 2 + dx + SIZE, SIZE // 2 + dy + SIZE)
                canvas.crop(box).save(folder / f"{k:02d}.png")
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--force", action="store_true", help="train again")
    args = p.parse_args(argv)
    root = make_glyphs()
    run = RUNS / "small_images" / "chars_grouping"
    if args.force or not (run / METRICS).exists():
        import shutil
        import subprocess
        import sys

        shutil.rmtree(run, ignore_errors=True)
        before, start = os.times(), time.time()
        subprocess.run([sys.executable, "-m", "core", "train", "--out", str(run), *COMMAND, f"data.root={root}"],
                       check=True)
        after = os.times()
        (run / "timing.json").write_text(json.dumps({
            "wall_s": round(time.time() - start, 1),
            "cpu_s": round(after.children_user + after.children_system - before.children_user - before.children_system, 1),
            "load_average": [round(v, 1) for v in os.getloadavg()]}))
    metrics = json.loads((run / METRICS).read_text())
    timing = json.loads((run / "timing.json").read_text())
    n_images = sum(1 for _ in root.rglob("*.png"))
    command = f"python -m core train --out runs/chars {' '.join(COMMAND)} data.root=DIR"
    t, start = metrics["test"], metrics.get("start", {}).get("test", {})
    md = ("# Small greyscale images from scratch: the first-result command\n\n"
          f"`{command}` on a generated nested greyscale character set ({len(SCRIPTS)} scripts, "
          f"{n_images // PER_CHARACTER} characters × {PER_CHARACTER} images of {SIZE} px, `<script>/<character>/`), "
          "on the shared 2-core CPU (wall time inflated by other jobs; CPU time is the process's user + system).\n\n"
          + md_table(["test R@1", "MAP@R", "start R@1 / MAP@R", "train images", "wall s", "CPU s", "load avg"],
                     [[f"{t['recall@1']:.3f}", f"{t['map_at_r']:.3f}",
                       f"{start.get('recall@1', float('nan')):.3f} / {start.get('map_at_r', float('nan')):.3f}",
                       metrics["train_images"], timing["wall_s"], timing["cpu_s"], timing["load_average"]]]) + "\n")
    write_results("small_images", {"metrics": metrics, "timing": timing, "command": command}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
