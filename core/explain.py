"""One verb for every explanation: `explain(model, query, reference=None, explainer=..., **options)`.

Every explainer is registered (`@register_explainer(name, kind=...)`) and returns an `Explanation`:
named maps (K×h×w or h×w numpy arrays), extras (named 1-D vectors that are not spatial, e.g. GSP's
attribute histogram; pages draw them as bar charts), a one-line description per map/extra, and the
embedding and group slices when the explainer has them. Pages loop over `explainers(kind, model)`
and never name an explainer or a method (the anchor: Captum's one `attribute` on every explainer).

Kinds (what the explainer needs besides the query image, and where the dashboard shows it):
  "maps"        nothing: maps of one image (Attention page: the query and every neighbour);
  "position"    `row`, `col` (image pixels): maps that depend on a position of the query (per-query maps);
  "attribution" `reference` (another image 3×H×W or its embedding D): what moved cos(query, reference);
  "contrast"    `reference` and `true_match` (image or embedding), `attribution` (an attribution
                explainer's name): why this neighbour rather than the true match; `to_reference`, when
                the caller has drawn it already: that explainer's map of the query towards `reference`
                (it is then not computed again);
  "cross"       `reference` (image B): where the query (A) looks in B and B in A;
  "patch"       `reference` (image B), `row`, `col` (feature grid of A): where A's patch lands in B.
Images are 3×H×W in [0, 1] (tensor or numpy); the model normalises internally. Explainers run in eval
mode, store nothing on the model (one cached model serves every browser session) and return CPU numpy.

Built in: learned maps of the head and blocks ("learned", this file), Captum attributions and the
difference ("gradcam", "integrated_gradients", "occlusion", "why_neighbour", computed in core/attribution.py),
cross-image maps ("cross_attention", "similarity_correspondence", "patch_correspondence", below). A
method adds its own beside it (CSA's per-position map: core/models/blocks/csa.py).

Cross-image maps (the functions behind the "cross" and "patch" explainers):

`cross_attention(model, image_a, image_b)` says where each image looks in the other, as
`a_in_b` (over B's feature positions, conditioned on A) and `b_in_a`, each K×h×w summing to 1
over positions. Two sources:

* **"cia"** (a run trained with the cross-image attention branch, `model.cia`): the trained
  attention of the last CIA layer, averaged over heads (K = 1). `a_in_b` is the attention over B's
  tokens when B's conditional embedding is formed with A as the condition (query from A).
* **"similarity"** (any run): a generic correspondence map. For each group g of the embedding
  (`Explanation.groups`: one for GAP, k for grouping heads, K learners for DSL), the softmax over
  B's positions p of cos(emb_A[g], pos_B[g, p]) / temperature, where pos_B are B's per-position
  embeddings: the head's `position_embeddings(features) -> B×D×h×w` when it has one (DSL: each
  position's attended share of the linear projection), otherwise the head applied to every
  feature position on its own as a 1×1 feature map (for GAP: its linear projection of that
  position's feature). If the head cannot run on a 1×1 map, the raw features are used against
  the raw pooled features of A (reported in `source`).

`patch_correspondence(model, image_a, image_b, row, col)` answers "click a patch in A, see where
it lands in B": softmax over B's positions of the cosine between A's feature at (row, col) and
B's features (backbone features by default; `space="embedding"` uses per-position embeddings).

Images are 3×H×W tensors in [0, 1] (the model normalises internally); maps are on the feature
grid (h×w); upsample them for display. Everything runs without gradients and works under
`torch.inference_mode()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.attribution import METHODS as ATTRIBUTIONS
from core.mode import evaluating
from core.registry import MAP_DESCRIPTIONS, Registry

KINDS = ("maps", "position", "attribution", "contrast", "cross", "patch")
_NEEDS_REFERENCE = {"attribution", "contrast", "cross", "patch"}


@dataclass
class Explanation:
    """What one explainer says about one query (CPU numpy, picklable: the dashboard caches it)."""
    maps: dict[str, np.ndarray] = field(default_factory=dict)    # name -> K×h×w or h×w
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # name -> 1-D non-spatial values (bar charts)
    descriptions: dict[str, str] = field(default_factory=dict)   # map or extra name -> one line
    signed: frozenset[str] = frozenset()                         # maps to draw on a diverging scale around 0
    embedding: np.ndarray | None = None                          # D, the query's embedding (when computed)
    groups: list[slice] = field(default_factory=list)            # embedding dims of each group/subspace
    notes: dict[str, Any] = field(default_factory=dict)          # scalars and labels (e.g. the maps' source)

    def describe(self, name: str) -> str:
        return self.descriptions.get(name, describe(name))


def describe(name: str) -> str:
    """The registered one-line description of a map or extra; a block's "name@stage" reads as "name"."""
    return MAP_DESCRIPTIONS.get(name, MAP_DESCRIPTIONS.get(name.split("@")[0], "no description registered"))


@dataclass(frozen=True)
class Explainer:
    name: str
    kind: str
    fn: Callable[..., Explanation]
    title: str                                  # a short label for pickers
    description: str                            # one line: what the maps mean
    supports: Callable[[Any], bool]             # model -> can this explainer explain it?


EXPLAINERS = Registry("explainer")


def register_explainer(name: str, *, kind: str = "maps", title: str | None = None,
                       supports: Callable[[Any], bool] | None = None, description: str | None = None) -> Callable:
    """Decorator: `fn(model, query, reference, **options) -> Explanation` becomes explainer `name`.
    `description` (default: the docstring's first line) is what pages show; `supports(model)` (default: every model)
    says whether it applies (e.g. CSA's per-position map needs a CSA block)."""
    if kind not in KINDS:
        raise ValueError(f"explainer {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def deco(fn):
        doc = description or (fn.__doc__ or name).strip().splitlines()[0]
        EXPLAINERS.register(name)(Explainer(name, kind, fn, title or name.replace("_", " "), doc,
                                            supports or (lambda model: True)))
        return fn
    return deco


def explainers(kind: str | None = None, model=None) -> list[Explainer]:
    """Registered explainers (of one kind, that support `model`), by name."""
    found = [EXPLAINERS.get(n) for n in EXPLAINERS.names()]
    return [e for e in found if (kind is None or e.kind == kind) and (model is None or e.supports(model))]


def explain(model, query, reference=None, *, explainer: str = "learned", **options) -> Explanation:
    """Explain `query` (an image 3×H×W in [0, 1]) with the registered `explainer` (see the module doc for
    what each kind takes as `reference` and options)."""
    entry = EXPLAINERS.get(explainer)
    if not entry.supports(model):
        raise ValueError(f"explainer {explainer!r} does not apply to this model; the ones that do: "
                         f"{', '.join(e.name for e in explainers(model=model))}")
    if entry.kind in _NEEDS_REFERENCE and reference is None:
        raise ValueError(f"explainer {explainer!r} ({entry.kind}) needs a reference: another image (3×H×W) "
                         f"or, for attributions, its embedding (D,)")
    return entry.fn(model, _as_tensor(query), None if reference is None else _as_tensor(reference), **options)


def _as_tensor(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.float()
    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(x if x.flags.writeable else x.copy())   # the pages share read-only arrays


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def embed(model, image_or_embedding: torch.Tensor) -> torch.Tensor:
    """An embedding (D,) from an image (3×H×W) or an embedding (passed through)."""
    if image_or_embedding.dim() == 1:
        return image_or_embedding
    return model.explain(_batch(image_or_embedding, _device(model))).embedding[0].float().cpu()  # eval mode, no grad


# ---- cross-image maps ---------------------------------------------------------------------------------
CROSS_SOURCES = {
    "cia": "trained cross-image attention (last CIA layer, mean over heads): where one image's "
           "conditional query looks in the other image's feature map",
    "similarity": "softmax over positions of the cosine between one image's embedding (per group) and the "
                  "other image's per-position embeddings; a generic correspondence map, not learned attention",
}


def _batch(image: torch.Tensor, device) -> torch.Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an image tensor 3×H×W (or 1×3×H×W) in [0, 1], got shape {tuple(image.shape)}")
    return image.to(device=device, dtype=torch.float32)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def position_embeddings(model, features: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(B×D×h×w per-position embeddings, how they were made) for a model's head."""
    head = model.head
    own = getattr(head, "position_embeddings", None)
    if callable(own):
        return own(features), "the head's position_embeddings"
    b, c, h, w = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)   # every position as a 1×1 map
    try:
        emb = torch.cat([head(chunk).embedding for chunk in cells.split(4096)])
    except (RuntimeError, ValueError):  # a head that needs spatial context: fall back to raw features
        return features, "raw features (the head cannot embed a single position)"
    return emb.reshape(b, h, w, -1).permute(0, 3, 1, 2), "the head applied to each position as a 1×1 map"


def _similarity_maps(query: torch.Tensor, positions: torch.Tensor, groups: list[slice], temperature: float):
    """query D, positions D×h×w -> K×h×w softmax over positions of the per-group cosine."""
    d, h, w = positions.shape
    maps = []
    for g in groups:
        q = F.normalize(query[g].float(), dim=0)
        p = F.normalize(positions[g].float().reshape(-1, h * w), dim=0)   # d_g×N
        maps.append(torch.softmax((q @ p) / temperature, dim=0).reshape(h, w))
    return torch.stack(maps)


def cross_attention(model, image_a: torch.Tensor, image_b: torch.Tensor, *, source: str = "auto",
                    temperature: float = 0.1, layer: int = -1, per_head: bool = False) -> dict:
    """Where A looks in B and B looks in A.

    Returns {"a_in_b": K×h×w, "b_in_a": K×h×w (each sums to 1 over positions), "source": str,
    "description": str, "groups": list[slice] (the embedding dims each of the K maps belongs to; CIA:
    one map over the whole embedding; raw-feature fallback: feature channels), "group_similarity":
    K cosines of A's and B's embeddings (per group; one whole-embedding value when K = 1), and for CIA
    "conditional_similarity": the trained conditional cosine s_AB}.
    `source`: "auto" (CIA when the run has the branch), "cia" or "similarity"; `temperature` sharpens
    the similarity maps; `layer`/`per_head` pick the CIA layer and keep heads apart (K = heads)."""
    if source not in ("auto", "cia", "similarity"):
        raise ValueError(f"source must be auto, cia or similarity, got {source!r}")
    cia = getattr(model, "cia", None)
    if source == "cia" and cia is None:
        raise ValueError("this run has no cross-image attention branch (model.cia); use source='similarity'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    use_cia = cia is not None and source in ("auto", "cia")
    device = _device(model)
    images = torch.cat([_batch(image_a, device), _batch(image_b, device)])
    with torch.no_grad(), evaluating(model):
        features = model.forward_features(images)
        explanation = model.explain(images)             # the generic interface: embedding + groups
        emb = explanation.embedding
        groups = list(explanation.groups) or [slice(0, emb.shape[1])]
        group_sim = torch.stack([F.cosine_similarity(emb[0, g].float(), emb[1, g].float(), dim=0) for g in groups])
        if use_cia:
            S, attention = cia.pairwise(emb, features)               # 2×2×L×H×h×w; [i, j]: over i's positions, query from j
            attention = attention[:, :, layer].float()
            a_in_b, b_in_a = attention[1, 0], attention[0, 1]       # H×h×w
            if not per_head:
                a_in_b, b_in_a = a_in_b.mean(0, keepdim=True), b_in_a.mean(0, keepdim=True)
            whole = [slice(0, emb.shape[1])]
            return {"a_in_b": a_in_b.cpu(), "b_in_a": b_in_a.cpu(), "source": "cia",
                    "description": CROSS_SOURCES["cia"], "groups": whole,
                    "group_similarity": F.cosine_similarity(emb[0:1].float(), emb[1:2].float()).cpu(),
                    "conditional_similarity": float(S[0, 1])}
        positions, how = position_embeddings(model, features)
        if positions is features:  # raw-feature fallback: raw pooled features of A, one map
            query = features.mean((2, 3))
            groups = [slice(0, features.shape[1])]
            group_sim = F.cosine_similarity(emb[0:1].float(), emb[1:2].float())
        else:
            query = emb
        a_in_b = _similarity_maps(query[0], positions[1], groups, temperature)
        b_in_a = _similarity_maps(query[1], positions[0], groups, temperature)
    return {"a_in_b": a_in_b.cpu(), "b_in_a": b_in_a.cpu(), "source": "similarity",
            "description": f"{CROSS_SOURCES['similarity']} (per-position embeddings: {how})",
            "groups": groups, "group_similarity": group_sim.cpu()}


def feature_grid(model, image: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the feature map the cross maps live on, for turning a click in pixels into a patch."""
    with torch.no_grad(), evaluating(model):
        f = model.forward_features(_batch(image, _device(model)))
    return int(f.shape[2]), int(f.shape[3])


def patch_correspondence(model, image_a: torch.Tensor, image_b: torch.Tensor, row: int, col: int, *,
                         temperature: float = 0.1, space: str = "features") -> torch.Tensor:
    """h×w map over B (sums to 1): where A's patch (row, col) of the feature grid lands in B.

    softmax_p cos(f_A[row, col], f_B[p]) / temperature with f the backbone features at the pooled stage
    (`space="features"`) or the per-position embeddings (`space="embedding"`, see `position_embeddings`)."""
    if space not in ("features", "embedding"):
        raise ValueError(f"space must be features or embedding, got {space!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = _device(model)
    images = torch.cat([_batch(image_a, device), _batch(image_b, device)])
    with torch.no_grad(), evaluating(model):
        features = model.forward_features(images)
        h, w = features.shape[2:]
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"patch ({row}, {col}) is outside the {h}×{w} feature grid")
        if space == "embedding":
            features, _ = position_embeddings(model, features)
        query = features[0, :, row, col]
        return _similarity_maps(query, features[1], [slice(0, features.shape[1])], temperature)[0].cpu()


# ---- the built-in explainers ----------------------------------------------------------------------------
@register_explainer("learned", kind="maps", title="learned maps")
def learned_maps(model, query, reference=None) -> Explanation:
    """Where the model pooled: every map its head and blocks return in a plain forward (not Captum)."""
    out = model.explain(_batch(query, _device(model)))     # eval mode, no gradients, maps returned (not stored)
    maps = {name: _numpy(m[0]) for name, m in out.maps.items()}
    # non-spatial outputs with one value per entry (e.g. GSP's attributes); wider ones are training state
    extras = {name: _numpy(e[0]) for name, e in out.extras.items() if e.dim() == 2}
    return Explanation(maps, extras, {name: describe(name) for name in [*maps, *extras]},
                       embedding=_numpy(out.embedding[0]), groups=list(out.groups))


def _attribution(name: str):
    def attribute(model, query, reference, n_steps: int = 32) -> Explanation:
        from core.attribution import similarity_attribution
        attr = similarity_attribution(model, query, embed(model, reference), name, n_steps)
        return Explanation({"attribution": attr}, descriptions={"attribution": ATTRIBUTIONS[name]},
                           signed=frozenset({"attribution"}))
    return attribute


# Captum's similarity attributions (core/attribution.py): signed maps, h×w (Grad-CAM) or H×W (IG)
for _name, _title in (("gradcam", "Grad-CAM"), ("integrated_gradients", "Integrated Gradients")):
    register_explainer(_name, kind="attribution", title=_title, description=ATTRIBUTIONS[_name])(_attribution(_name))


@register_explainer("occlusion", kind="attribution", title="Occlusion", description=ATTRIBUTIONS["occlusion"])
def occlusion_map(model, query, reference, *, fill: str = "mean") -> Explanation:
    """Captum's Occlusion of the similarity to the reference, one feature-grid cell at a time (h×w, signed)."""
    from core.attribution import similarity_attribution
    attr = similarity_attribution(model, query, embed(model, reference), "occlusion", fill=fill)
    return Explanation({"attribution": attr}, descriptions={"attribution": ATTRIBUTIONS["occlusion"]},
                       signed=frozenset({"attribution"}), notes={"fill": fill})


@register_explainer("why_neighbour", kind="contrast", title="why this neighbour")
def why_neighbour(model, query, reference, *, true_match, attribution: str = "gradcam",
                  n_steps: int = 32, to_reference=None) -> Explanation:
    """The query's attribution towards the neighbour minus towards its true match: red drew it to the neighbour."""
    from core.attribution import why_not_true_match
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {attribution!r}")
    maps = why_not_true_match(model, query, embed(model, reference), embed(model, _as_tensor(true_match)),
                              attribution, n_steps, None if to_reference is None else np.asarray(to_reference))
    return Explanation(maps, descriptions={
        "to_neighbour": "attribution of the similarity to the neighbour",
        "to_true_match": "attribution of the similarity to the nearest true match",
        "difference": "towards the neighbour minus towards the true match: red drew the query to the neighbour"},
        signed=frozenset(maps))


def _cross(source: str):
    def cross(model, query, reference, *, temperature: float = 0.1, layer: int = -1,
              per_head: bool = False) -> Explanation:
        out = cross_attention(model, query, reference, source=source, temperature=temperature, layer=layer,
                              per_head=per_head)
        maps = {"a_in_b": _numpy(out["a_in_b"]), "b_in_a": _numpy(out["b_in_a"])}
        notes = {"source": out["source"], "group_similarity": _numpy(out["group_similarity"]).ravel()}
        if "conditional_similarity" in out:
            notes["conditional_similarity"] = out["conditional_similarity"]
        return Explanation(maps, descriptions={"a_in_b": "where A looks in B: " + out["description"],
                                               "b_in_a": "where B looks in A: " + out["description"]},
                           groups=list(out["groups"]), notes=notes)
    return cross


register_explainer("cross_attention", kind="cross", title="trained cross-image attention",
                   supports=lambda model: getattr(model, "cia", None) is not None,
                   description=CROSS_SOURCES["cia"])(_cross("cia"))
register_explainer("similarity_correspondence", kind="cross", title="similarity correspondence",
                   description=CROSS_SOURCES["similarity"])(_cross("similarity"))


@register_explainer("patch_correspondence", kind="patch", title="patch correspondence")
def patch_map(model, query, reference, *, row: int, col: int, temperature: float = 0.1,
              space: str = "features") -> Explanation:
    """Where the query's patch (row, col of its feature grid) lands in the reference image."""
    lands = patch_correspondence(model, query, reference, row, col, temperature=temperature, space=space)
    return Explanation({"lands": _numpy(lands)}, descriptions={
        "lands": f"softmax over the reference's positions of the cosine to the query's patch ({space})"})
