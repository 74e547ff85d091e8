"""Captum attribution of a *similarity*: which pixels moved cos(model(x), reference) up or down.

Captum attributes one scalar per example, so the embedder is wrapped to return the cosine
similarity to a fixed, detached reference embedding (research/dashboard.md §4.1). Two methods:

- Grad-CAM on the feature stage (coarse, h×w, cheap): gradient-weighted feature channels;
- Integrated Gradients on the pixels (fine, H×W, n_steps forwards): completeness holds, so the
  map sums to cos(x, ref) − cos(black image, ref).

"Why this neighbour rather than the true match" is the difference of two attributions of the same
query: towards the neighbour minus towards the true match. Positive pixels pulled the query to
the (wrong) neighbour more than to its true match.

Gradients must flow: never call these under `torch.inference_mode()` or `no_grad`. The learned
attention maps (`model.explain`) are read elsewhere, in a plain forward; they are not Captum output.
Pages reach these functions through the registered explainers "gradcam", "integrated_gradients" and
"why_neighbour" of core/explain.py (registered there, so that this module imports nothing of core).
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
}

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
                           n_steps: int = 32) -> np.ndarray:
    """Attribution of cos(model(image), reference) -> signed map, h×w (Grad-CAM) or H×W (IG).

    image: 3×H×W (or 1×3×H×W) in [0, 1]; reference: an embedding (D,) of the other image.
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
