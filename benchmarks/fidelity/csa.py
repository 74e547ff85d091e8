"""CSA against its authors' code: copied weights, identical inputs, max abs differences.

    git clone https://github.com/czyczyyzc/Compressed_Self-Attention /tmp/csa_official   # anywhere outside the repo
    python -m benchmarks.fidelity.csa --official /tmp/csa_official

Imports only the official class file `PCB_CSA/reid/models/reSAnet.py` (it needs torch and torchvision) and
compares its `SelfAttn2` with `core.models.blocks.csa`:
  * main block: theirs with gamma=True, ours `CompressedSelfAttention2d` (γ set to the same non-zero value,
    so the residual branch counts);
  * side branch: theirs with gamma=None (output conv only), ours `CompressedAttention`;
  * maps: their base maps (softmax over positions) and adaptive weights (softmax over bases), read by
    recording the two softmaxes their forward computes, against the maps our block returns;
  * gradients of a fixed random linear function of the output w.r.t. the input and every parameter.
Shapes: the shipped shapes run's stage2 (C 64, 16×16) and a re-ID layer1 map (C 256, 96×32, as in their
PCB ResNet-50 at 384×128 input), float64 and float32. Their defaults: 32 bases, 2 groups, scale 14.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import md_table, write_results
from core.models.blocks.csa import CompressedAttention, CompressedSelfAttention2d

CLASS_FILE = Path("PCB_CSA/reid/models/reSAnet.py")


def official_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def load_official(root: Path):
    path = root / CLASS_FILE
    if not path.exists():
        raise SystemExit(f"{path} not found: --official must be a checkout of czyczyyzc/Compressed_Self-Attention")
    spec = importlib.util.spec_from_file_location("csa_official_reSAnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _SoftmaxRecorder(types.SimpleNamespace):
    """Stands in for `torch.nn.functional` inside their module: records every softmax by its dim."""

    def __init__(self):
        super().__init__(calls={})

    def __getattr__(self, name):
        return getattr(F, name)

    def softmax(self, t, dim=None, **kw):
        out = F.softmax(t, dim=dim, **kw)
        self.calls[dim] = out
        return out


def copy_weights(theirs, ours: CompressedAttention) -> None:
    with torch.no_grad():
        for mine, other in ((ours.query, theirs.query_conv), (ours.value, theirs.value_conv), (ours.out, theirs.out_conv)):
            mine.weight.copy_(other.weight)
            mine.bias.copy_(other.bias)
        ours.bases.copy_(theirs.weight.view_as(ours.bases))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def compare(official, channels: int, hw: tuple[int, int], dtype: torch.dtype, groups: int = 2, bases: int = 32,
            batch: int = 2, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):                     # their constructor prints
        main_theirs = official.SelfAttn2(channels, centr_num=bases, group_num=groups, gamma=True).to(dtype)
        side_theirs = official.SelfAttn2(channels, centr_num=bases, group_num=groups).to(dtype)
    ours = CompressedSelfAttention2d(channels, groups=groups, num_bases=bases).to(dtype).eval()
    copy_weights(main_theirs, ours.attention)
    copy_weights(side_theirs, ours.side)
    with torch.no_grad():
        main_theirs.gamma.fill_(0.7)
        ours.gamma.fill_(0.7)
    x = torch.randn(batch, channels, *hw, dtype=dtype)
    probe = torch.randn(batch, channels, *hw, dtype=dtype)               # a fixed linear loss for the gradients
    recorder, saved_f = _SoftmaxRecorder(), official.F
    official.F = recorder
    try:
        x1 = x.clone().requires_grad_()
        out_theirs = main_theirs(x1)
        maps_theirs = dict(recorder.calls)
        (out_theirs * probe).sum().backward()
        side_out_theirs = side_theirs(x)
    finally:
        official.F = saved_f
    x2 = x.clone().requires_grad_()
    out_ours, maps = ours(x2, return_maps=True)
    (out_ours * probe).sum().backward()
    side_out_ours = ours.side(x)[0]
    b, n = batch, hw[0] * hw[1]
    pairs = [(ours.attention.query.weight, main_theirs.query_conv.weight),
             (ours.attention.query.bias, main_theirs.query_conv.bias),
             (ours.attention.value.weight, main_theirs.value_conv.weight),
             (ours.attention.out.weight, main_theirs.out_conv.weight),
             (ours.attention.bases, main_theirs.weight),
             (ours.gamma, main_theirs.gamma)]
    grad_params = max(_max_diff(p.grad, q.grad.reshape(p.grad.shape)) for p, q in pairs)
    return {"channels": channels, "grid": f"{hw[0]}×{hw[1]}", "dtype": str(dtype).replace("torch.", ""),
            "output": _max_diff(out_ours, out_theirs),
            "side_output": _max_diff(side_out_ours, side_out_theirs),
            "base_maps": _max_diff(maps["csa_base"].reshape(b * groups, bases, n), maps_theirs[2]),
            "weights": _max_diff(maps["csa_weights"].reshape(b * groups, bases, n), maps_theirs[1]),
            "grad_input": _max_diff(x2.grad, x1.grad), "grad_params": grad_params,
            "output_scale": float(out_theirs.detach().abs().max()),
            "grad_scale": max(float(q.grad.abs().max()) for _, q in pairs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="checkout of czyczyyzc/Compressed_Self-Attention")
    p.add_argument("--name", default="fidelity_csa")
    args = p.parse_args(argv)
    official, commit = load_official(args.official), official_commit(args.official)
    rows, results = [], []
    for channels, hw in ((64, (16, 16)), (256, (96, 32))):
        for dtype in (torch.float64, torch.float32):
            r = compare(official, channels, hw, dtype)
            results.append(r)
            rows.append([r["channels"], r["grid"], r["dtype"]] +
                        [f"{r[k]:.1e}" for k in ("output", "side_output", "base_maps", "weights", "grad_input",
                                                 "grad_params")] + [f"{r['output_scale']:.1f}", f"{r['grad_scale']:.0f}"])
    md = ("# Fidelity: CSA against the official `SelfAttn2`\n\n"
          f"Official code: `{CLASS_FILE}` at commit {commit} of czyczyyzc/Compressed_Self-Attention. Max abs differences with copied weights and identical "
          "inputs (batch 2, 2 groups × 32 bases, scale 14, γ = 0.7).\n\n"
          + md_table(["C", "grid", "dtype", "output", "side output", "base maps", "weights", "∂input", "∂params",
                      "max |output|", "max |∂params|"], rows))
    write_results(args.name, {"official": str(args.official), "commit": commit, "results": results}, md)
    print(md)
    worst64 = max(max(r[k] for k in ("output", "side_output", "base_maps", "weights")) for r in results
                  if r["dtype"] == "float64")
    return 0 if worst64 < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
