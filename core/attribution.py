"""Captum attribution of a *similarity*: which pixels moved cos(model(x), reference) up or down.

Captum attributes one scalar per example, so the embedder is wrapped to return the cosine
similarity to a fixed, detached reference embedding (research/dashboard.md §4.1). Two methods:

- Grad-CAM on the feature stage (coarse, h×w, cheap): gradient-weighted feature channels;
- Integrated Gradients on the pixels (fine, H×W, n_steps forwards): completeness holds, so the
  map sums to cos(x, ref) − cos(black image, ref);
- Occlusion on the feature grid (h×w, one forward per cell, batched): each cell's drop of the similarity
  when that cell alone is filled (`fill_image`: the image's mean colour, or a blur). It asks the model
  directly, so it is the model-agnostic reference the other maps can be compared with.

"Why this neighbour rather than the true match" is the difference of two attributions of the same
query: towards the neighbour minus towards the true match. Positive pixels pulled the query to
the (wrong) neighbour more than to its true match.

Gradients must flow: never call these under `torch.inference_mode()` or `no_grad`. The learned
attention maps (`model.explain`) are read elsewhere, in a plain forward; they are not Captum output.
Pages reach these functions through the registered explainers "gradcam", "integrated_gradients",
"occlusion" and "why_neighbour" of core/explain.py (registered there, so that this module imports nothing of core).

Hiding cells (`fill_image`, `cells_to_pixels`) is shared with the deletion curves (core/faithfulness.py) and
the re-ranking (core/rerank.py), so occlusion, deletion and a hidden query fill a cell the same way.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METHODS = {
    "gradcam": "Grad-CAM on the feature stage: feature channels weighted by the gradient of the similarity "
               "(coarse, one value per feature position)",
    "integrated_gradients": "Integrated Gradients on the pixels, from a black image (fine; the map sums to the "
                            "similarity gained over the black image)",
    "occlusion": "Occlusion: how much the similarity drops when each feature-grid cell alone is filled with the "
                 "image's mean colour (one value per cell; asks the model, needs no gradient)",
}
FILLS = ("mean", "blur")   # what a hidden cell shows: the image's mean colour, or a strong blur of the image

# Captum registers hooks on the (shared, cached) model for the duration of a call; one at a time.
_LOCK = threading.Lock()


class SimilarityToReference(nn.Module):
    """forward(x) -> cos(embed(x), reference), shape (N,): a scalar per example for Captum."""

    def __init__(self, embedder: nn.Module, reference: torch.Tensor):
        super().__init__()
        self.embedder = embedder
        self.register_buffer("reference", F.normalize(reference.detach().flatten().float(), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedder(x), dim=-1) @ self.reference


def feature_layer(model) -> nn.Module:
    """The module whose output is the pooled feature map (the last block after the feature stage, if any; a
    researcher's own network names its own: `UserModel.feature_module`)."""
    own = getattr(model, "feature_module", None)
    if own is not None:
        return own
    stage = model.feature_stage
    blocks = model.blocks[stage] if stage in model.blocks else []
    return blocks[-1] if len(blocks) else model.backbone.stages[stage]


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    image = image.detach().float()
    return image.unsqueeze(0) if image.dim() == 3 else image


def similarity_attribution(model, image: torch.Tensor, reference: torch.Tensor, method: str = "gradcam",
                           n_steps: int = 32, fill: str = "mean") -> np.ndarray:
    """Attribution of cos(model(image), reference) -> signed map, h×w (Grad-CAM, occlusion) or H×W (IG).

    image: 3×H×W (or 1×3×H×W) in [0, 1]; reference: an embedding (D,) of the other image; `n_steps`: IG's
    path steps; `fill`: what occlusion hides a cell with (FILLS).
    """
    from captum.attr import IntegratedGradients, LayerGradCam

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    # inference_mode(False): a caller inside torch.inference_mode() (e.g. a UI) still gets gradients;
    # the clone makes sure the input is a normal tensor that autograd may record
    with _LOCK, torch.inference_mode(False), torch.enable_grad():
        x = _as_batch(image).clone()
        wrapped = SimilarityToReference(model, reference.clone()).eval()
        if method == "gradcam":
            attr = LayerGradCam(wrapped, feature_layer(model)).attribute(x)          # 1×1×h×w
            return attr[0, 0].detach().cpu().numpy()
        if method == "occlusion":
            return occlusion(wrapped, x, grid_of(model, x), fill)
        ig = IntegratedGradients(wrapped)
        attr = ig.attribute(x, baselines=torch.zeros_like(x), n_steps=n_steps, internal_batch_size=8)
        return attr[0].sum(0).detach().cpu().numpy()                                  # H×W, signed


def why_not_true_match(model, query: torch.Tensor, neighbour_embedding: torch.Tensor,
                       true_match_embedding: torch.Tensor, method: str = "gradcam",
                       n_steps: int = 32, to_neighbour: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Attribution of the query towards a neighbour and towards its true match, and their difference.
    `to_neighbour`: the first attribution when the caller already has it (same method), so Captum runs once."""
    if to_neighbour is None:
        to_neighbour = similarity_attribution(model, query, neighbour_embedding, method, n_steps)
    to_true = similarity_attribution(model, query, true_match_embedding, method, n_steps)
    return {"to_neighbour": to_neighbour, "to_true_match": to_true, "difference": to_neighbour - to_true}


# ---- hiding cells: occlusion, deletion curves and re-ranking fill them alike ---------------------------
def fill_image(image: torch.Tensor, fill: str = "mean") -> torch.Tensor:
    """What hidden pixels show, same shape as `image` (…×3×H×W): "mean", every pixel the image's mean colour
    (per channel), or "blur", a Gaussian blur with sigma an eighth of the image side (shapes and colours lose
    their edges but keep a hint of their colour)."""
    if fill == "mean":
        return image.mean((-2, -1), keepdim=True).expand_as(image).clone()
    if fill == "blur":
        from torchvision.transforms.functional import gaussian_blur
        sigma = max(image.shape[-2:]) / 8
        return gaussian_blur(image, [2 * int(2 * sigma) + 1] * 2, [sigma, sigma])
    raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")


def cells_to_pixels(hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Hidden cells (…×h×w bool, any grid) -> hidden pixels (…×H×W bool): pixel (y, x) belongs to cell
    (⌊y·h/H⌋, ⌊x·w/W⌋), the same mapping a click on the grid uses."""
    lead = hidden.shape[:-2]
    flat = hidden.reshape(-1, 1, *hidden.shape[-2:]).float()
    return (F.interpolate(flat, size=tuple(size), mode="nearest") > 0.5).reshape(*lead, *size)


def grid_of(model, x: torch.Tensor) -> tuple[int, int]:
    """The feature grid (h, w) of a MetricLens model, or 8×8 for a model without `forward_features`."""
    features = getattr(model, "forward_features", None)
    if features is None:
        return 8, 8
    with torch.no_grad():
        return tuple(features(x[:1].detach()).shape[-2:])


def occlusion(similarity: nn.Module, x: torch.Tensor, grid: tuple[int, int], fill: str = "mean",
              per_forward: int = 64) -> np.ndarray:
    """Captum's Occlusion of `similarity` (a SimilarityToReference) over the cells of `grid`: h×w, each cell's
    similarity(x) − similarity(x with that cell filled). Cells are image blocks of ⌈H/h⌉×⌈W/w⌉ pixels."""
    from captum.attr import Occlusion

    height, width = x.shape[-2:]
    window = (3, -(-height // grid[0]), -(-width // grid[1]))
    with torch.no_grad():
        attr = Occlusion(similarity).attribute(x, sliding_window_shapes=window, strides=window,
                                               baselines=fill_image(x, fill), perturbations_per_eval=per_forward)
    # every pixel of a cell carries that cell's drop: average back to the grid
    return F.adaptive_avg_pool2d(attr.mean(1, keepdim=True), grid)[0, 0].detach().cpu().numpy()
