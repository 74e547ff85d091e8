"""How much of a map lies on the object: maps scored against ground-truth masks (plausibility, not faithfulness).

Each channel is upsampled bilinearly to the mask's size, clipped at 0 and normalised to a distribution over
pixels; its *mass* is the share inside the mask, its *pointing hit* whether its argmax pixel is inside. A
uniform map's mass is the mask's area share: the baseline every mass is read against. Used by the run-level
faithfulness table (core/faithfulness_table.py) and the interpretability benchmarks.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def score_maps(maps: torch.Tensor, masks: torch.Tensor, clutter: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """maps B×K×h×w, masks B×H×W bool -> per image and channel: mass inside (B×K), pointing hit (B×K); with
    `clutter` (B×H×W bool, the distractors) also the mass on it ("clutter", B×K)."""
    up = F.interpolate(maps.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False).clamp_min(0)
    total = up.sum((2, 3))                                            # B×K
    valid = total > 0
    dist = up / total.clamp_min(1e-12)[..., None, None]
    m = masks[:, None].float()
    mass = (dist * m).sum((2, 3))
    flat = up.flatten(2).argmax(-1)                                   # B×K
    hit = m.flatten(2).expand(-1, up.size(1), -1).gather(2, flat[..., None])[..., 0]
    mass[~valid], hit[~valid] = float("nan"), float("nan")            # e.g. GSP prototypes before warm-up
    scores = {"mass": mass.numpy(), "hit": hit.numpy()}
    if clutter is not None:
        on_clutter = (dist * clutter[:, None].float()).sum((2, 3))
        on_clutter[~valid] = float("nan")
        scores["clutter"] = on_clutter.numpy()
    return scores


def mass_on_object(cell_map: np.ndarray, mask) -> float:
    """The share of one h×w map's positive mass inside an H×W mask (NaN for a map with no positive mass)."""
    cells = torch.from_numpy(np.nan_to_num(np.asarray(cell_map, dtype=np.float32)))[None, None]
    return float(score_maps(cells, torch.as_tensor(np.asarray(mask, dtype=bool))[None])["mass"][0, 0])
