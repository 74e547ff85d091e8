"""Your own embedding network as a MetricLens model: `UserModel` wraps any `nn.Module` that maps images to embeddings.

`python -m core import-model` (core/import_model.py) builds the network from the researcher's code
(`--factory module:function`, called with no arguments) or from an architecture name (`--arch torchvision:<name>`
or `timm:<name>`, its classifier replaced by a linear embedder), loads their weights and records how in
config.json's `model.user_model` (`spec` below):

    factory       "lab_model:build", or null          arch          "torchvision:resnet18", or null
    embed_dim     D of the linear embedder (arch)     head_layer    the classifier it replaces (arch; null: the last Linear)
    feature_layer the module Grad-CAM and the cross-image maps read, e.g. "layer4"
    mean, std     the input normalisation (pixels in [0, 1] are normalised inside the model, as every backbone does)
    weights       {"file": the user's file, "sha256": its checksum, "strip_prefix": ...}: provenance only; the run's
                  own weights.safetensors holds the loaded state dict, so the run folder can be moved
    factory_file  where the factory's module was found at import (named in the message when it cannot be imported)

The wrapper gives the network the interface every page and explainer uses for a trained run:
- `forward(x)`: pixels in [0, 1] -> (x - mean) / std -> the network -> L2-normalised B×D;
- `forward_features(x)`: the feature layer's output B×C×h×w, read by a forward hook (the rest is skipped);
- `explain(x)`: the embedding, no learned maps, one group;
- `head`: the network after the feature layer applied to a given feature map (a hook swaps in that map), so the
  "similarity" cross-image explainer gets per-position embeddings; `explain.position_embeddings` falls back to
  raw features when the network cannot run on a 1×1 map;
- `feature_module`: the feature layer, where Grad-CAM attributes (`core.attribution.feature_layer`).
A hook acts only for the thread that set it: one cached model serves every browser session at once.
"""
from __future__ import annotations

import difflib
import importlib
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.models.embedder import EmbeddingAndMaps
from core.models.heads.base import HeadOutput
from core.mode import evaluating

ARCH_LIBRARIES = ("torchvision", "timm")


class UserModelError(ValueError):
    """A network, factory or weights file that cannot become a model; the message says what to fix."""


# ---- building the network ---------------------------------------------------------------------------------
def _where(err: BaseException) -> str:
    """' (lab_model.py line 12)': the innermost frame of a user's error, so they can find it."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]  # not <frozen ...>
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""


def factory_function(text: str):
    """The callable named by 'module:function', imported from PYTHONPATH."""
    module_name, sep, fn_name = text.partition(":")
    if not (sep and module_name and fn_name):
        raise UserModelError(f"factory {text!r} is not module:function, e.g. lab_model:build (a function in "
                             f"lab_model.py that returns your network)")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name == module_name.split(".")[0]
        why = (f"no module {module_name!r} on the Python path" if missing else
               f"importing it raised {type(err).__name__}: {err}{_where(err)}")
        raise UserModelError(f"factory {text}: {why}. It must be importable: set PYTHONPATH to the folder holding "
                             f"{module_name.split('.')[0]}.py (for the dashboard too)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise UserModelError(f"factory {text}: {getattr(module, '__file__', module_name)} has no function "
                             f"{fn_name!r} (it defines: {', '.join(defined) or 'no functions'})")
    return fn


def call_factory(text: str) -> nn.Module:
    fn = factory_function(text)
    try:
        net = fn()
    except Exception as err:
        raise UserModelError(f"factory {text}: calling {text.partition(':')[2]}() failed: {type(err).__name__}: "
                             f"{err}{_where(err)}. It is called with no arguments") from None
    if not isinstance(net, nn.Module):
        raise UserModelError(f"factory {text} returned a {type(net).__name__}, not a torch.nn.Module; return the "
                             f"network itself (the module that maps an image batch to embeddings)")
    return net


def factory_file(text: str) -> str | None:
    """The file the factory's module was imported from (recorded, to name it when it later cannot be found)."""
    module = importlib.import_module(text.partition(":")[0])
    return str(Path(module.__file__).resolve()) if getattr(module, "__file__", None) else None


def last_linear(net: nn.Module) -> str:
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserModelError("the architecture has no Linear layer to replace by the embedder; name it with "
                             "--head-layer, or build the network in your own --factory")
    return names[-1]


def replace_layer(net: nn.Module, name: str, embed_dim: int | None) -> None:
    """Replace the classifier `name` by Linear(in, embed_dim), or by Identity (embed_dim None: pooled features)."""
    try:
        layer = net.get_submodule(name)
    except AttributeError:
        linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise UserModelError(f"--head-layer {name!r} is not a module of the network; its Linear layers: "
                             f"{', '.join(linear[-8:]) or 'none'}") from None
    if embed_dim and not isinstance(layer, nn.Linear):
        raise UserModelError(f"--head-layer {name!r} is a {type(layer).__name__}, not a Linear layer; name the "
                             f"classifier the embedder replaces")
    parent, _, leaf = name.rpartition(".")
    new = nn.Linear(layer.in_features, embed_dim) if embed_dim else nn.Identity()
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


def build_arch(arch: str, embed_dim: int | None, head_layer: str | None) -> nn.Module:
    """A known architecture, randomly initialised, with its classifier replaced by the embedder."""
    library, _, name = arch.partition(":")
    if library not in ARCH_LIBRARIES or not name:
        raise UserModelError(f"--arch {arch!r}: give torchvision:<name> or timm:<name>, e.g. torchvision:resnet50")
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise UserModelError(f"--arch {arch}: timm is not installed here. Install it (pip install timm, the "
                                 f"version your weights were trained with), or build the network in your own "
                                 f"--factory module:function") from None
        if name not in timm.list_models():
            close = difflib.get_close_matches(name, timm.list_models(), 5)
            raise UserModelError(f"--arch {arch}: timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
        if head_layer:
            raise UserModelError("--head-layer applies to torchvision models; timm replaces its own classifier "
                                 "(num_classes = --embed-dim, or pooled features without it)")
        return timm.create_model(name, pretrained=False, num_classes=embed_dim or 0)
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, 5)
        raise UserModelError(f"--arch {arch}: torchvision has no classification model {name!r}"
                             + (f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(names[:6])}, ..."))
    net = torchvision.models.get_model(name, weights=None)
    replace_layer(net, head_layer or last_linear(net), embed_dim)
    return net


def build_network(spec: dict) -> nn.Module:
    if spec.get("factory"):
        return call_factory(spec["factory"])
    if spec.get("arch"):
        return build_arch(spec["arch"], spec.get("embed_dim"), spec.get("head_layer"))
    raise UserModelError("model.user_model names neither a factory nor an arch")


# ---- checking what the network returns, and finding its feature layer ------------------------------------
def check_output(out, batch: int, what: str = "the network") -> torch.Tensor:
    """`out` when it is a B×D tensor with B = `batch`, else a UserModelError saying what it is instead."""
    if not torch.is_tensor(out):
        kind = type(out).__name__ + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise UserModelError(f"{what} returned a {kind}, not a tensor: it must map an image batch B×3×H×W to "
                             f"embeddings B×D (return the embedding alone, e.g. `return emb`, not `return emb, logits`)")
    if out.dim() != 2 or out.shape[0] != batch:
        hint = (" (a feature map: pool and flatten it, e.g. torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))"
                if out.dim() == 4 else " (one row per image: does it average or reshape over the batch?)"
                if out.dim() == 2 else "")
        raise UserModelError(f"{what} returned shape {tuple(out.shape)} for a batch of {batch} images; the "
                             f"embeddings must be B×D = {batch}×D{hint}")
    return out


@contextmanager
def _hook(module: nn.Module, fn):
    """A forward hook on `module` that fires only in this thread, removed on leaving."""
    me = threading.get_ident()
    handle = module.register_forward_hook(lambda m, i, o: fn(o) if threading.get_ident() == me else None)
    try:
        yield
    finally:
        handle.remove()


class _Reached(Exception):
    """Raised by a hook once the feature layer has run: the rest of the network is not needed."""


def feature_map_layers(net: nn.Module, x: torch.Tensor) -> list[str]:
    """The modules whose output is a 4-D map with more than one position, in the order they finish in one
    forward of `x` (a container finishes after its children)."""
    found, handles = [], []
    for name, module in net.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: found.append(name)
                if torch.is_tensor(o) and o.dim() == 4 and o.shape[2] * o.shape[3] > 1 else None))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def choose_feature_layer(net: nn.Module, x: torch.Tensor, wanted: str | None = None) -> str:
    """`wanted` when it outputs a 4-D feature map, else the last module that does before pooling."""
    names = feature_map_layers(net, x)
    if wanted is None:
        if not names:
            raise UserModelError("no module of the network outputs a feature map B×C×h×w (with more than one "
                                 "position) before the embedding, so Grad-CAM and the cross-image maps have nothing "
                                 "to read; name one with --feature-layer")
        return names[-1]
    if wanted not in names:
        known = dict(net.named_modules())
        why = ("is not a module of the network" if wanted not in known else
               "does not output a feature map B×C×h×w with more than one position")
        close = difflib.get_close_matches(wanted, names, 5) or names[-5:]
        raise UserModelError(f"--feature-layer {wanted!r} {why}; modules that do: {', '.join(close)}")
    return wanted


# ---- the wrapper ------------------------------------------------------------------------------------------
class UserModel(nn.Module):
    """A researcher's network with the interface of `Embedder` (see the module doc)."""

    def __init__(self, net: nn.Module, feature_layer: str, mean, std, embed_dim: int, image_size: int):
        super().__init__()
        self.net, self.feature_layer = net, feature_layer
        self.embed_dim, self.image_size = int(embed_dim), int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.cia = None  # no cross-image attention branch: the "similarity" cross-image maps apply
        net.get_submodule(feature_layer)  # fails now, not at the first explanation

    @property
    def feature_module(self) -> nn.Module:
        return self.net.get_submodule(self.feature_layer)

    @property
    def head(self) -> "NetworkTail":
        return NetworkTail(self)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], B×3×H×W -> L2-normalised embeddings B×D."""
        return F.normalize(check_output(self.net(self.normalize(x)), len(x)), dim=-1)

    def forward_features(self, x: torch.Tensor, return_maps: bool = False):
        """The feature layer's output B×C×h×w (with `return_maps`, (features, {}): the network returns no maps)."""
        captured = []

        def grab(output):
            captured.append(output)
            raise _Reached

        with _hook(self.feature_module, grab):
            try:
                self.net(self.normalize(x))
            except _Reached:
                pass
        if not captured:
            raise UserModelError(f"the feature layer {self.feature_layer!r} did not run in a forward pass")
        return (captured[0], {}) if return_maps else captured[0]

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> EmbeddingAndMaps:
        with evaluating(self):
            return EmbeddingAndMaps(self(x), {}, self.head.groups, {})

    def block_modules(self) -> list[nn.Module]:
        return []


class NetworkTail:
    """The network after its feature layer, as a head: features B×C×h×w -> `HeadOutput` (its L2-normalised output).
    A forward of a blank one-image batch has its feature layer's output swapped for `features`; a network whose
    later layers depend on the input batch fails `check_output` (a ValueError: callers fall back)."""

    def __init__(self, model: UserModel):
        self.model = model

    @property
    def groups(self) -> list[slice]:
        return [slice(0, self.model.embed_dim)]

    def __call__(self, features: torch.Tensor) -> HeadOutput:
        model = self.model
        blank = torch.zeros(1, 3, model.image_size, model.image_size, device=features.device)
        with _hook(model.feature_module, lambda output: features):
            try:
                out = model.net(model.normalize(blank))
            except Exception as err:  # e.g. a layer that needs the full h×w: the caller falls back to raw features
                raise UserModelError(f"the network cannot run on a {tuple(features.shape[1:])} feature map: "
                                     f"{type(err).__name__}: {err}") from None
        return HeadOutput(F.normalize(check_output(out, len(features), "the network after its feature layer"), dim=-1))
