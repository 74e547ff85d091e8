"""The programs the dashboard's background jobs run: `python -m dashboard.workers KIND ... --progress FILE`.

- `umap EMBEDDINGS OUT`: UMAP coordinates of an N×D array (a run's test embeddings, or the items of an
  isolated selection), written whole or not at all;
- `retrieval-table ARTIFACTS OUT`: every item scored against all others (`logic.retrieval_table`);
- `thumbnails RUN FOLDER [--data-root ROOT]`: every item's hover thumbnail, as JPEG sheets.
Each appends its progress as JSON lines to FILE (`core.progress`) for the job's bars. No Streamlit here:
the server starts these in nice'd child processes (`dashboard/background.py`), so their work never
competes with the pages for the server's own threads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from core.progress import Progress, ProgressLog
from core.run_dir import ARTIFACTS, EMBEDDINGS, ITEMS, LABELS

THUMB_SIDE, SHEET_SIDE = 48, 10   # thumbnails of 48 px, 10×10 to a sheet: one JPEG per 100 items


def umap(embeddings: str, out: str, report: Progress) -> None:
    from core.io import atomic_save_npy
    from core.projection import umap_2d

    atomic_save_npy(out, umap_2d(np.load(embeddings), progress=True, report=report))


def retrieval_table(artifacts: str, out: str, report: Progress) -> None:
    from dashboard import logic

    phase = "scoring every item against all others"
    report(0, 1, phase)
    art = Path(artifacts)
    logic.save_table(logic.retrieval_table(np.load(art / EMBEDDINGS), np.load(art / LABELS)), out)
    report(1, 1, phase)


def thumbnails(run_dir: str, folder: str, report: Progress, data_root: str | None = None) -> None:
    """Every item's thumbnail, as JPEG sheets folder/<item // 100>.jpg (item i at cell i % 100, row-major; the
    hover script in dashboard/map_bridge.js reads them so). A sheet is written whole or not at all, and one
    that is there already is kept."""
    from PIL import Image

    from core.artifacts import item_images

    image_of = item_images(run_dir, data_root or None)  # an imported run's images: the files its items name
    metas = json.loads((Path(run_dir) / ARTIFACTS / ITEMS).read_text())
    out, per_sheet = Path(folder), SHEET_SIDE * SHEET_SIDE
    out.mkdir(parents=True, exist_ok=True)
    sheets = range(0, len(metas), per_sheet)
    for done, first in enumerate(sheets):
        report(done, len(sheets), "thumbnails")
        path = out / f"{first // per_sheet}.jpg"
        if path.exists():
            continue
        sheet = Image.new("RGB", (THUMB_SIDE * SHEET_SIDE,) * 2, (128, 128, 128))
        for j in range(min(per_sheet, len(metas) - first)):
            try:
                pixels = image_of(first + j)   # 3×H×W in [0, 1]
            except OSError:  # an imported item without a readable image: its cell stays grey
                continue
            image = Image.fromarray((np.clip(pixels.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(image.resize((THUMB_SIDE,) * 2, Image.BILINEAR),
                        ((j % SHEET_SIDE) * THUMB_SIDE, (j // SHEET_SIDE) * THUMB_SIDE))
        tmp = path.with_suffix(".tmp")
        sheet.save(tmp, format="JPEG", quality=80)
        tmp.replace(path)
    report(len(sheets), len(sheets), "thumbnails")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboard.workers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    u = sub.add_parser("umap", help="UMAP coordinates of an N×D .npy")
    u.add_argument("embeddings")
    u.add_argument("out")
    r = sub.add_parser("retrieval-table", help="every item of a run's artifacts scored against all others")
    r.add_argument("artifacts")
    r.add_argument("out")
    t = sub.add_parser("thumbnails", help="hover thumbnails of a run's items, as JPEG sheets")
    t.add_argument("run_dir")
    t.add_argument("folder")
    t.add_argument("--data-root", help="the run's data folder, when it moved")
    for command in (u, r, t):
        command.add_argument("--progress", required=True, help="append progress here as JSON lines")
    args = parser.parse_args(argv)
    report = ProgressLog(args.progress, fresh=True)
    if args.kind == "umap":
        umap(args.embeddings, args.out, report)
    elif args.kind == "retrieval-table":
        retrieval_table(args.artifacts, args.out, report)
    else:
        thumbnails(args.run_dir, args.folder, report, args.data_root or None)


if __name__ == "__main__":
    main()
