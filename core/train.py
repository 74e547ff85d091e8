"""One Trainer: seeded loop, AMP on CUDA, per-epoch validation, best-epoch selection, resume, DDP.

Resume: every completed epoch is saved to RUN_DIR/resume.pt (atomically); running the same
command again continues after the last completed epoch. Each epoch reseeds every RNG from
(seed, epoch), so an interrupted-and-resumed run sees the same batches as an uninterrupted one.
Distributed: under `torchrun --nproc_per_node N` each rank takes every N-th batch of the same
seeded sampler and losses gather embeddings across ranks (pytorch-metric-learning wrappers).
Never worse than the start: before any update the starting weights are scored on the validation
classes (history row epoch -1) and stay a candidate for the best epoch, so a run that does not
learn returns its starting point and says so (`improved_over_start` in metrics.json). With
`train.warmup_epochs` W, epochs 0..W-1 train only the new layers (head, projection, inserted
blocks, CIA branch, loss parameters) while every backbone weight is frozen and its BatchNorm
layers stay in eval mode; from epoch W the backbone trains again exactly as configured. With
`model.projection_init: pca` the head's projection first becomes the principal directions of the
pooled train features (`init_projection`), so the start scores about like the frozen network.
"""
from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch.utils.data import DataLoader

from core import checkpoint as ckpt
from core.config import RunConfig
from core.io import atomic_torch_save, atomic_write_text, write_json
from core.data import DataSplits, build_datasets, build_transform, check_evaluable
from core.data import summary as data_summary
from core.data.cache import CachedImages, DeviceBatches, cached_splits, use_cache
from core.evaluate import evaluate_splits
from core.losses import DMLCriterion, build_criterion, cia_criterion
from core.models.embedder import Embedder, build_model
from core.models.heads.base import pca_init_
from core.mode import evaluating
from core.sampling import class_balanced_batches
from core.train_context import TrainContext

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]

# train.lr_schedule: the factor on every group's lr at epoch e of E. Cosine decays to 0 over the run (the last
# epochs take small steps, so the best validation epoch is not picked from a noisy lr-1e-3 plateau).
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda epoch, epochs: 1.0,
    "cosine": lambda epoch, epochs: 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1))),
}


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what was kept."""


class NonFiniteLoss(TrainingError):
    """A NaN/inf loss: the epoch is abandoned before its update, the best weights so far are kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def _config_diff(a: dict, b: dict, prefix="") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


class TrainingStep(torch.nn.Module):
    """The forward of one training step, model and loss terms together. DistributedDataParallel wraps this,
    not the bare model, so that it sees every parameter a step uses, also those used only after the
    embedding: head losses (GSP's ZSR class embeddings, per-group margins), CSA's deep supervision, the
    CIA branch and learnable loss parameters (proxies)."""

    def __init__(self, model: Embedder, criterion: DMLCriterion):
        super().__init__()
        self.model, self.criterion = model, criterion
        cia = model.cia
        # the CIA branch gets its criterion injected (its own loss/miner if configured, else this one). It is
        # kept out of the module tree: the branch scores with copies of it, so no parameter of it is used here
        # (DDP would refuse unused parameters)
        object.__setattr__(self, "cia_criterion", None if cia is None else cia_criterion(
            criterion, cia.loss_name, cia.loss_args, cia.miner_name, cia.embed_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out, features = self.model(x, with_features=True)
        terms = self.model.head.loss(out, y, self.criterion)
        for block in self.model.block_modules():  # e.g. CSA deep-supervision heads
            if hasattr(block, "loss"):
                terms.update(block.loss(y, self.criterion))
        if self.model.cia is not None:  # training-only cross-image attention branch
            terms.update(self.model.cia.loss(out, features, y, self.cia_criterion))
        return terms


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, progress: Progress | None = None,
                 splits: DataSplits | None = None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank, self.world = 0, 1
        self.device = resolve_device(cfg.train.device)
        if self.distributed:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
        seed_everything(cfg.train.seed)
        self.splits = splits or build_datasets(cfg.data, seed=cfg.train.seed)
        if use_cache(cfg.data, self.device):  # decode once; train batches are gathered and augmented on the device
            self.splits = cached_splits(self.splits, cfg.data, cfg.train.num_workers, progress)
        self.num_classes = self.splits.num_train_classes
        found = data_summary(self.splits)
        if self.num_classes < 2 and cfg.train.epochs > 0:
            raise TrainingError(f"only {self.num_classes} train class: metric learning needs pairs of images from "
                                "at least 2 classes (and unseen test classes); add classes to the data set (or set "
                                f"data.class_depth if the classes are deeper in the folder tree). Found:\n{found}")
        if self.rank == 0:
            log.info("%s", found)
        check_evaluable(self.splits)  # before any epoch: a part where no image can be a query is refused now
        if self.splits.val is None and cfg.data.val_classes > 0 and cfg.train.epochs > 0:
            log.warning("only %d train classes: too few to hold some out for validation (needs 4), so no best "
                        "epoch is chosen: the last epoch is kept", self.num_classes)
        self.model: Embedder = build_model(cfg.model, num_classes=self.num_classes).to(self.device)
        # proxy losses index proxies by label, and train labels are global ids (not contiguous)
        label_slots = int(self.splits.train.labels.max()) + 1
        criterion = build_criterion(cfg.train, label_slots, self.model.head.out_dim)
        if self.distributed:  # gather embeddings across ranks so pairs span the global batch
            criterion = DMLCriterion(DistributedLossWrapper(criterion.loss),
                                     DistributedMinerWrapper(criterion.miner) if criterion.miner else None)
        self.criterion = criterion.to(self.device)
        self._check_settings()
        self.optimizer = self._optimizer()
        self.context = TrainContext(
            train_labels=self.splits.train.labels, seed=cfg.train.seed, epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size, m_per_class=cfg.train.m_per_class, device=self.device,
            optimizer=self.optimizer, loss=getattr(self.criterion, "loss", None), run_dir=self.run_dir,
            rank=self.rank, distributed=self.distributed, embed_fn=self._embed_train_set)
        # backbone parameters the configuration trains (frozen BN affine and freeze_backbone excluded):
        # exactly these are frozen during the warm-up and trained again after it
        self.backbone_trainable = [p for p in self.model.backbone.parameters() if p.requires_grad]
        self.stopped: str | None = None   # why the run ended early (lr 0, non-finite loss)
        self.warmup_epochs = cfg.train.warmup_epochs  # 0 when there is no new layer to warm up
        self.start_metrics: dict[str, float] = {}
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.epoch = 0                # next epoch to run
        self.best = {"epoch": -1, "value": -math.inf}
        self.history: list[dict] = []
        self.training_step: torch.nn.Module = TrainingStep(self.model, self.criterion)
        if self.distributed:
            self.training_step = torch.nn.parallel.DistributedDataParallel(
                self.training_step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    # ---- set-up ---------------------------------------------------------------------------
    @property
    def backbone_lr(self) -> float:
        t = self.cfg.train
        return t.lr if t.backbone_lr is None else t.backbone_lr  # 0 means 0, not "same as lr"

    def _check_settings(self) -> None:
        """Refuse values that cannot train before anything is built on them."""
        t = self.cfg.train
        for key, value in (("train.lr", t.lr), ("train.backbone_lr", t.backbone_lr)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise TrainingError(f"{key}={value} is not a learning rate; use a positive number such as 3e-5")
        if self.cfg.model.projection_init not in ("random", "pca"):
            raise TrainingError(f"model.projection_init={self.cfg.model.projection_init!r}; use random or pca")
        if t.warmup_epochs < 0:
            raise TrainingError(f"train.warmup_epochs={t.warmup_epochs} must be 0 or more")
        if t.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"train.lr_schedule={t.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")

    def _optimizer(self) -> torch.optim.Optimizer | None:
        t = self.cfg.train
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        own = [{"params": [p for p in g["params"] if p.requires_grad], "lr": t.lr * g.get("lr_scale", 1.0),
                **({} if g.get("weight_decay") is None else {"weight_decay": g["weight_decay"]})}
               for g in self.model.head.param_groups()]  # e.g. DGML's β at its own lr
        grouped = backbone_ids | {id(p) for g in own for p in g["params"]}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in grouped]
        rest += [p for p in self.criterion.parameters() if p.requires_grad]  # proxies, learnable β
        groups = [g for g in ({"params": backbone, "lr": self.backbone_lr}, {"params": rest, "lr": t.lr}, *own)
                  if g["params"]]
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(t.optimizer)
        if cls is None:
            raise ValueError(f"unknown optimizer {t.optimizer!r}; use adam or adamw")
        if not groups:  # e.g. a frozen backbone with a projection-free head: evaluate-only runs
            if t.epochs > 0:
                raise TrainingError("nothing to train: every parameter is frozen; set train.epochs=0 to "
                                    "evaluate the model as built, or unfreeze something (model.freeze_backbone=false)")
            return None
        return cls(groups, lr=t.lr, weight_decay=t.weight_decay)

    def set_epoch_lr(self, epoch: int) -> float:
        """Every group's lr for this epoch: its base lr times the schedule's factor. Computed from the epoch
        alone, so a resumed run continues the same curve. Returns the factor."""
        factor = LR_SCHEDULES[self.cfg.train.lr_schedule](epoch, self.cfg.train.epochs)
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                # the group's own lr, kept beside it on the first call (in the optimiser's state, so a resumed
                # run has it; a resume file from before the schedule had a constant lr, i.e. its own)
                g["lr"] = g.setdefault("base_lr", g["lr"]) * factor
        return factor

    def train_loader(self, epoch: int) -> tuple[DataLoader, list]:
        """The epoch's batches and each batch's tag. The head may schedule its own (`Head.epoch_batches`,
        each batch with a tag); otherwise class-balanced MPerClassSampler batches, untagged (None)."""
        t = self.cfg.train
        scheduled = self.model.head.epoch_batches(self.context, epoch)
        if scheduled is not None:
            batches = [[int(i) for i in idx] for idx, _ in scheduled]
            tags = [tag for _, tag in scheduled]
        else:
            batches = class_balanced_batches(self.splits.train.labels, t.m_per_class, t.batch_size,
                                             seed=t.seed * 100_003 + epoch, min_batches=self.world)
            tags = [None] * len(batches)
        if self.world > 1:  # DDP: every rank must take the same number of steps, or the last all-reduce waits forever
            keep = len(batches) // self.world * self.world
            batches, tags = batches[:keep], tags[:keep]
        batches = batches[self.rank::self.world]  # DDP: same seeded order everywhere, disjoint shards
        if isinstance(self.splits.train, CachedImages):
            loader = DeviceBatches(self.splits.train, batches, self.device, self.cfg.data.augment,
                                   seed=t.seed * 100_003 + epoch)
            return loader, tags[self.rank::self.world]
        loader = DataLoader(self.splits.train, batch_sampler=batches, num_workers=t.num_workers,
                            pin_memory=self.device.type == "cuda")
        return loader, tags[self.rank::self.world]

    @torch.no_grad()
    def _embed_train_set(self, pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """`TrainContext.embed_train_set`: every train item with the test-time transform, in eval mode."""
        data = copy.copy(self.splits.train)
        if hasattr(data, "transform"):
            data.transform = build_transform(self.cfg.data, train=False)
        out = []
        with evaluating(self.model):
            for x, _, _ in DataLoader(data, batch_size=128, shuffle=False, num_workers=self.cfg.train.num_workers):
                x = x.to(self.device)
                out.append((self.model(x) if pool is None else pool(self.model.forward_features(x))).float().cpu())
        return torch.cat(out).numpy()

    # ---- resume -----------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        cfg_path = self.run_dir / ckpt.CONFIG
        if cfg_path.exists():
            old = ckpt.read_json(cfg_path)
            new = self.cfg.to_dict()
            diff = [k for k in _config_diff(old, new) if k != "train.epochs"]
            if diff:
                raise TrainingError(f"{self.run_dir} already holds a different run (config differs in: "
                                    f"{', '.join(diff)}). Choose another --out, or delete that folder to start over.")
        resume = self.run_dir / ckpt.RESUME
        if resume.exists():
            state = ckpt.load_resume(resume)
            ckpt.load_state_into(self.model, state["model"], str(resume))
            self.model.head.load_extra_state(state.get("head_state", {}))
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if "criterion" in state:
                self.criterion.load_state_dict(state["criterion"])
            self.epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]
            start = [r for r in self.history if r["epoch"] == -1]
            self.start_metrics = {k: v for k, v in start[0].items() if k.startswith("val_")} if start else {}
            log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])
        if self.rank == 0:
            self.cfg.save(cfg_path)

    def _save_resume(self, epoch: int) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                 "criterion": self.criterion.state_dict(), "epoch": epoch, "best": self.best,
                 "history": self.history, "head_state": self.model.head.extra_state()}
        atomic_torch_save(self.run_dir / ckpt.RESUME, state)

    def _write_history(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / ckpt.HISTORY, buf.getvalue())

    # ---- loop -------------------------------------------------------------------------------
    def compute_losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.training_step(x, y)

    def step(self, batch, tag=None) -> dict[str, float]:
        """THE training step, as every epoch runs it: batch = (images, labels[, indices]); the head hears
        the batch's tag (`on_batch_start`), the loss terms are computed under the trainer's autocast, then
        backward and one optimiser step. Returns each term and their sum "loss" as floats. A non-finite
        loss raises NonFiniteLoss before any gradient is applied."""
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        self.training_step.train()
        self.model.head.on_batch_start(self.context, tag)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            terms = self.compute_losses(x, y)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            bad = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise NonFiniteLoss(f"loss is not finite ({bad})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {**{k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach())}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        seed_everything(self.cfg.train.seed * 100_003 + epoch)
        loader, tags = self.train_loader(epoch)
        sums: dict[str, float] = {}
        steps = 0
        for step, batch in enumerate(loader):
            try:
                values = self.step(batch, tags[step])
            except NonFiniteLoss as err:
                raise NonFiniteLoss(str(err).replace("not finite", f"not finite at epoch {epoch}, step {step}", 1)) from None
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            if self.progress and self.rank == 0:
                self.progress(step + 1, len(loader), f"epoch {epoch + 1}/{self.cfg.train.epochs} loss {values['loss']:.4f}")
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def validate(self) -> dict[str, float]:
        t = self.cfg.train
        which = "val" if self.splits.val is not None else "test"
        # without a validation part we can only report test metrics; they never pick the epoch
        progress = self.progress if self.rank == 0 else None
        metrics = evaluate_splits(self.model, self.splits, self.device, t.recall_ks, which=which, progress=progress)
        return {f"{which}_{k}": v for k, v in metrics.items()}

    # ---- warm-up and the starting point ------------------------------------------------------
    def new_layer_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the backbone: head (incl. projection), blocks, CIA, loss."""
        backbone = {id(p) for p in self.model.backbone.parameters()}
        params = [p for p in self.model.parameters() if id(p) not in backbone]
        return [p for p in params + list(self.criterion.parameters()) if p.requires_grad]

    def warming_up(self, epoch: int) -> bool:
        return epoch < self.warmup_epochs and bool(self.backbone_trainable)

    def set_warmup(self, on: bool) -> None:
        """Freeze (on) or train again (off) exactly the backbone parameters the config trains; while on,
        the backbone's BatchNorm layers stay in eval mode (running statistics frozen too)."""
        for p in self.backbone_trainable:
            p.requires_grad_(not on)
        self.model.freeze_backbone = on or self.cfg.model.freeze_backbone  # Embedder.train() keeps BN in eval
        self.training_step.train(self.training_step.training)

    def _describe_warmup(self, on: bool) -> str:
        n_backbone = sum(p.numel() for p in self.backbone_trainable)
        n_new = sum(p.numel() for p in self.new_layer_parameters())
        bn = "eval (frozen)" if (self.cfg.model.frozen_bn or on) else "train mode"
        if on:
            return (f"warm-up: backbone frozen ({n_backbone:,} weights, BatchNorm {bn}); training only the new "
                    f"layers ({n_new:,} weights: head/projection, blocks, CIA, loss) at lr {self.cfg.train.lr:g}")
        return (f"backbone unfrozen: {n_backbone:,} weights at lr {self.backbone_lr:g}, BatchNorm {bn}; new layers "
                f"({n_new:,} weights) at lr {self.cfg.train.lr:g}")

    def evaluate_start(self) -> None:
        """Score the weights before any update; they become the best-epoch candidate 'start' (epoch -1)."""
        if not self.cfg.train.eval_start or self.splits.val is None:
            return
        start = time.time()
        self.start_metrics = self.validate()
        value = self.start_metrics.get(f"val_{self.cfg.train.select_metric}", -math.inf)
        self.best = {"epoch": -1, "value": value}
        self.history.append({"epoch": -1, **self.start_metrics, "seconds": round(time.time() - start, 2)})
        ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch=-1)
        # history.csv is written with the first epoch (its existence still means "an epoch completed")
        log.info("start (before any update): %s", {k: round(v, 4) for k, v in self.start_metrics.items()})

    def init_projection(self) -> None:
        """`model.projection_init: pca`: before anything else sees the weights, the head's projection starts as
        the principal directions of the pooled train features (`Head.projection_input`, `heads.base.pca_init_`), so
        that the start, a best-epoch candidate, scores about like the frozen network instead of below it."""
        how = self.cfg.model.projection_init
        if how == "random":
            return
        layer = self.model.head.input_projection()
        if layer is None:
            log.info("model.projection_init=%s: the %s head has no projection; nothing to start", how,
                     self.cfg.model.head)
            return
        start = time.time()
        if self.rank == 0:  # under torchrun the other ranks receive the result instead of embedding it again
            rows = pca_init_(layer, self._embed_train_set(lambda f: self.model.head.projection_input(f.float())))
            log.info("projection started from the train features' %d leading principal directions (%.1f s)",
                     rows, time.time() - start)
        if self.distributed:
            for p in layer.parameters():
                dist.broadcast(p.data, 0)

    def _nothing_to_learn(self) -> str | None:
        """Why training could not change anything (every trainable group has lr 0), or None."""
        t = self.cfg.train
        if self.optimizer is None or any(g["lr"] > 0 for g in self.optimizer.param_groups):
            return None
        return (f"train.lr={t.lr:g}" + (f" and train.backbone_lr={t.backbone_lr:g}" if t.backbone_lr is not None else "")
                + ": no weight can change, so no epoch was run; the starting weights are kept and scored. "
                "Set a positive learning rate (e.g. train.lr=3e-5) to train")

    # ---- main -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_run_dir()
        if self.epoch < t.epochs and self.rank == 0:  # training (again): earlier results no longer describe the weights
            (self.run_dir / ckpt.METRICS).unlink(missing_ok=True)
        fresh = self.epoch == 0 and not self.history  # a resumed run keeps its trained weights and its start row
        if fresh:
            self.init_projection()
        self.model.head.on_train_start(self.context)
        if fresh and self.rank == 0 and t.epochs > 0:
            self.evaluate_start()
        if not (self.run_dir / ckpt.WEIGHTS).exists() and self.rank == 0:
            # evaluate as built (epochs=0), and what a run that stops before its first epoch returns
            ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch=-1)
        if t.epochs > 0:
            self.stopped = self._nothing_to_learn()
        if self.warmup_epochs and self.backbone_trainable and not self.new_layer_parameters():
            log.info("train.warmup_epochs=%d ignored: no new layer to warm up (no projection, head or block "
                     "weights); the backbone trains from epoch 0", t.warmup_epochs)
            self.warmup_epochs = 0
        elif t.warmup_epochs and not self.backbone_trainable:
            log.info("train.warmup_epochs=%d has no effect: the backbone is frozen for the whole run", t.warmup_epochs)
        warm = None
        while self.epoch < t.epochs and self.stopped is None:
            epoch, start = self.epoch, time.time()
            if self.warming_up(epoch) != warm:
                warm = self.warming_up(epoch)
                self.set_warmup(warm)
                if self.backbone_trainable and self.warmup_epochs and self.rank == 0:
                    log.info("epoch %d: %s", epoch, self._describe_warmup(warm))
            self.context.epoch = epoch
            lr_factor = self.set_epoch_lr(epoch)
            self.model.head.on_epoch_start(self.context, epoch)
            try:
                row = {"epoch": epoch, **self.train_epoch(epoch), "lr": t.lr * lr_factor}
            except NonFiniteLoss as err:
                # the bad step was never applied; reload the best weights in finish(), keep what was done
                self.stopped = (f"{err}; that update was not applied and the epoch's earlier ones are discarded. "
                                f"Lower train.lr (now {t.lr}) or check the data")
                break
            metrics: dict[str, float] = {}
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                metrics = self.validate() if self.rank == 0 else {}
            row.update(metrics)
            self.model.head.on_epoch_end(self.context, epoch, metrics)
            row["seconds"] = round(time.time() - start, 2)
            self.history.append(row)
            if self.rank == 0:
                key = f"val_{t.select_metric}"
                value = metrics.get(key)
                improved = value is not None and value > self.best["value"]
                if improved or self.splits.val is None:  # no validation part: keep the last epoch
                    self.best = {"epoch": epoch, "value": value if value is not None else -math.inf}
                    ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch)
                self._write_history()
                self._save_resume(epoch)
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
            self.epoch += 1
        if warm:
            self.set_warmup(False)
        if self.rank == 0 and self.history and self.stopped:
            self._write_history()  # stopped before an epoch completed: the start row still goes on record
        if self.distributed:
            dist.barrier()
        metrics = self.finish() if self.rank == 0 else {}
        if self.stopped and "not finite" in self.stopped:
            raise TrainingError(f"{self.stopped}. Run stopped: {self._verdict(metrics)}")
        return metrics

    def _verdict(self, metrics: dict) -> str:
        if not metrics:
            return ""
        if metrics["best_epoch"] == -1:
            return "best = the starting weights (no epoch improved on them), saved in weights and metrics.json"
        return f"best = epoch {metrics['best_epoch']}, saved in weights and metrics.json"

    def finish(self) -> dict:
        """Reload the best weights, score them on the test classes, write metrics and artifacts."""
        from core.artifacts import embed_and_score, write_artifacts

        t = self.cfg.train
        model, _ = ckpt.load_run(self.run_dir, self.device)
        test, parts = embed_and_score(model, self.splits, self.device, t.recall_ks, progress=self.progress)
        rows = {r["epoch"]: r for r in self.history}
        best_row = rows.get(self.best["epoch"], {})
        key = f"val_{t.select_metric}"
        metrics = {"test": test, "best_epoch": self.best["epoch"], "epochs": t.epochs,
                   "select_metric": t.select_metric,
                   "val": {k: v for k, v in best_row.items() if k.startswith("val_")},
                   "train_seconds": round(sum(r.get("seconds", 0) for r in self.history), 1),
                   "num_train_classes": self.num_classes, "train_images": len(self.splits.train),
                   "device": str(self.device),
                   "warmup_epochs": self.warmup_epochs}
        if self.start_metrics:  # the starting point was a candidate: say plainly whether training helped
            metrics["start"] = {"val": self.start_metrics}
            metrics["improved_over_start"] = self.best["epoch"] != -1
            start, best = self.start_metrics.get(key, math.nan), best_row.get(key, math.nan)
            if metrics["improved_over_start"]:
                log.info("validation %s: %.4f at start -> %.4f at best epoch %d (%+.4f)", t.select_metric, start,
                         best, self.best["epoch"], best - start)
            elif t.epochs > 0:
                log.warning("training did not improve on the starting weights (validation %s %.4f at start, no "
                            "epoch better): the run returns its starting point", t.select_metric, start)
        if self.stopped:
            metrics["stopped"] = self.stopped
            log.error("run stopped early: %s", self.stopped)
        write_artifacts(self.run_dir, parts)
        # metrics.json last: it marks the run finished, so a run killed while finishing never shows
        # new weights beside the previous artifacts
        write_json(self.run_dir / ckpt.METRICS, metrics)
        return metrics


def train(cfg: RunConfig, run_dir: str | Path, progress: Progress | None = None) -> dict:
    return Trainer(cfg, run_dir, progress).fit()
