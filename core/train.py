"""One Trainer: seeded loop, AMP on CUDA, per-epoch validation, best-epoch selection, resume, DDP.

Resume: every completed epoch is saved to RUN_DIR/resume.pt (atomically); running the same
command again continues after the last completed epoch. Each epoch reseeds every RNG from
(seed, epoch), so an interrupted-and-resumed run sees the same batches as an uninterrupted one.
Never worse than the start: before any update the starting weights are scored on the validation
classes (history row epoch -1) and on the test classes; they stay a candidate for the best epoch, so a
run that does not learn returns its starting point and says so (`improved_over_start` in metrics.json).
With a frozen backbone (`model.freeze_backbone`) its features are computed once and cached on disk, every
epoch trains from them, and the frozen network itself is scored beside the start (`core.train_features`).
With `model.projection_init: pca` the head's projection first becomes the principal directions of the
pooled train features (`init_projection`), so the start scores about like the frozen network.
Beside this module: `train_optim` (optimiser groups, lr schedule, warm-up), `train_record` (history,
resume, the best epoch, what metrics.json says), `train_ddp` (torchrun), `train_step` (the step's forward).
"""
from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from core import checkpoint as ckpt
from core import train_ddp as ddp
from core.config import RunConfig
from core.io import write_json
from core.data import DataSplits, build_datasets, build_transform, check_evaluable
from core.data import summary as data_summary
from core.data import parts as data_parts
from core.data.cache import CachedImages, DeviceBatches, cached_splits, use_cache
from core.data.features import CachedFeatures, FeatureBatches
from core.evaluate import evaluate_splits
from core.losses import build_criterion
from core.models.embedder import Embedder, build_model
from core.models.heads.base import pca_init_
from core.mode import evaluating
from core.sampling import class_balanced_batches
from core import train_features
from core.backbone_weights import remember_pretrained
from core.train_context import TrainContext
from core.train_optim import Warmup, build_optimizer, nothing_to_learn, param_groups, set_epoch_lr, settings_problem
from core.train_record import RunRecord, closing_summary
from core.train_step import TrainingStep  # noqa: F401  (also imported from here)

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]


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


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, progress: Progress | None = None,
                 splits: DataSplits | None = None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.distributed = ddp.under_torchrun()
        self.rank, self.world = 0, 1
        self.device = resolve_device(cfg.train.device)
        if self.distributed:
            self.rank, self.world, self.device = ddp.join(self.device)
        seed_everything(cfg.train.seed)
        self.splits = splits or build_datasets(cfg.data, seed=cfg.train.seed)
        caching_features = train_features.uses_feature_cache(cfg, self.splits)
        if not caching_features and use_cache(cfg.data, self.device):
            # decode once; train batches are gathered and augmented on the device
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
        self.model: Embedder = self._build_model()
        self.cut: str | None = None  # with cached features: the stage whose output the items are
        self.feature_cache: dict = {}
        if caching_features:
            self._cache_features()
        self.net = self.model if self.cut is None else train_features.FromCut(self.model, self.cut)
        # proxy losses index proxies by label, and train labels are global ids (not contiguous)
        label_slots = int(self.splits.train.labels.max()) + 1
        criterion = build_criterion(cfg.train, label_slots, self.model.head.out_dim)
        if self.distributed:  # gather embeddings across ranks so pairs span the global batch
            criterion = ddp.gathering(criterion)
        self.criterion = criterion.to(self.device)
        problem = settings_problem(cfg)
        if problem:
            raise TrainingError(problem)
        self.optimizer = build_optimizer(param_groups(self.model, self.criterion, cfg.train), cfg.train)
        if self.optimizer is None and cfg.train.epochs > 0:
            raise TrainingError("nothing to train: every parameter is frozen; set train.epochs=0 to evaluate the "
                                "model as built, or unfreeze something (model.freeze_backbone=false)")
        self.context = TrainContext(
            train_labels=self.splits.train.labels, seed=cfg.train.seed, epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size, m_per_class=cfg.train.m_per_class, device=self.device,
            optimizer=self.optimizer, loss=getattr(self.criterion, "loss", None), run_dir=self.run_dir,
            rank=self.rank, distributed=self.distributed, embed_fn=self._embed_train_set)
        # exactly the backbone weights the configuration trains are frozen during the warm-up
        self.warmup = Warmup(self.model, self.criterion, cfg)
        self.record = RunRecord(self.run_dir, cfg.train.select_metric)
        self.stopped: str | None = None   # why the run ended early (lr 0, non-finite loss)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.training_step: torch.nn.Module = TrainingStep(self.model, self.criterion, self.cut)
        if self.distributed:
            self.training_step = ddp.wrap(self.training_step, self.device)

    def _build_model(self) -> Embedder:
        """The model of the config on the device, reported as a phase (loading pretrained weights takes a while)."""
        m = self.cfg.model
        phase = (f"loading the model: {m.backbone}{' with its pretrained weights' if m.pretrained else ''}, "
                 f"{m.head} head")
        if self.progress and self.rank == 0:
            self.progress(0, 1, phase)
        start = time.time()
        model = build_model(m, num_classes=self.num_classes).to(self.device)
        remember_pretrained(model, m)  # a frozen pretrained backbone is then stored by name and checksum
        if self.progress and self.rank == 0:
            self.progress(1, 1, phase)
        if self.rank == 0:
            log.info("%s (%.1f s)", phase, time.time() - start)
        return model

    def _cache_features(self) -> None:
        """A frozen backbone: every image's features up to the cut, computed once (rank 0; the others wait) or
        read back, and the data parts replaced by them."""
        start = time.time()
        if self.distributed and self.rank != 0:
            ddp.barrier()
        splits, cut, done = train_features.cache(self.cfg, self.model, self.splits, self.device,
                                                 self.progress if self.rank == 0 else None)
        if self.distributed and self.rank == 0:
            ddp.barrier()
        if splits is None:  # nothing to train and no cache yet: the test images are embedded directly
            return
        self.splits, self.cut = splits, cut
        self.feature_cache = {"layer": self.cut, "views": self.cfg.train.cached_views, "files": done,
                              "seconds": round(time.time() - start, 1)}
        if self.rank == 0:
            train_features.describe(self.cfg, self.feature_cache)

    @property
    def epoch(self) -> int:
        """The next epoch to run."""
        return self.record.next_epoch

    # ---- data -------------------------------------------------------------------------------------
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
        batches, tags = ddp.shard(batches, tags, self.rank, self.world)
        if isinstance(self.splits.train, CachedFeatures):
            return FeatureBatches(self.splits.train, batches, seed=t.seed * 100_003 + epoch), tags
        if isinstance(self.splits.train, CachedImages):
            return DeviceBatches(self.splits.train, batches, self.device, self.cfg.data.augment,
                                 seed=t.seed * 100_003 + epoch), tags
        return DataLoader(self.splits.train, batch_sampler=batches, num_workers=t.num_workers,
                          pin_memory=self.device.type == "cuda"), tags

    @torch.no_grad()
    def _embed_train_set(self, pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """`TrainContext.embed_train_set`: every train item with the test-time transform (cached features: view
        0), in eval mode."""
        data = copy.copy(self.splits.train)
        if hasattr(data, "transform"):
            data.transform = build_transform(self.cfg.data, train=False)
        out = []
        with evaluating(self.model):
            for x, _, _ in DataLoader(data, batch_size=128, shuffle=False, num_workers=self.cfg.train.num_workers):
                features = self.model.forward_features(x.to(self.device), after=self.cut)
                out.append((self.model.forward_head(features).embedding if pool is None else pool(features)).float().cpu())
        return torch.cat(out).numpy()

    # ---- one step, one epoch, validation -------------------------------------------------------------
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
        which = "val" if self.splits.val is not None else "test"
        # without a validation part we can only report test metrics; they never pick the epoch
        progress = self.progress if self.rank == 0 else None
        return {f"{which}_{k}": v for k, v in self._score(self.net, which, progress).items()}

    def _score(self, net: torch.nn.Module, which: str, progress: Progress | None = None) -> dict[str, float]:
        return evaluate_splits(net, self.splits, self.device, self.cfg.train.recall_ks, which=which, progress=progress)

    # ---- the starting point ---------------------------------------------------------------------------
    def evaluate_start(self) -> None:
        """Before any update: the starting weights on validation (the best-epoch candidate 'start', epoch -1) and
        on test; with a frozen backbone also the frozen network itself on both (the reference)."""
        t, references = self.cfg.train, self.record.references
        if t.eval_start and self.splits.val is not None:
            start = time.time()
            metrics = self.validate()
            self.record.record_start(metrics, time.time() - start)
            ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch=-1)
            # history.csv is written with the first epoch (its existence still means "an epoch completed")
            log.info("start (before any update): %s", {k: round(v, 4) for k, v in metrics.items()})
            references["start"] = {"val": metrics, "test": self._score(self.net, "test", self.progress)}
        if self.cut is not None:  # a frozen backbone: the frozen network itself is the reference to beat
            frozen = train_features.FrozenNetwork(self.model, self.cut)
            references["frozen"] = {"test": self._score(frozen, "test", self.progress)}
            if self.splits.val is not None:
                references["frozen"]["val"] = {f"val_{k}": v for k, v in self._score(frozen, "val", self.progress).items()}

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
            rows = pca_init_(layer, self._embed_train_set(lambda f: self.model.head.projection_input(f.float())),
                             centre=how == "pca")
            log.info("projection started from the train features' %d leading principal directions%s (%.1f s)",
                     rows, "" if how == "pca" else " (uncentred)", time.time() - start)
        if self.distributed:
            ddp.broadcast(layer)

    # ---- main -----------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        conflict = self.record.conflict(self.cfg)
        if conflict:
            raise TrainingError(conflict)
        self.record.restore(self.model, self.optimizer, self.criterion)
        if self.rank == 0:
            self.cfg.save(self.run_dir / ckpt.CONFIG)

    def fit(self) -> dict:
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_run_dir()
        if self.epoch < t.epochs and self.rank == 0:  # training (again): earlier results no longer describe the weights
            (self.run_dir / ckpt.METRICS).unlink(missing_ok=True)
        fresh = self.record.fresh  # a resumed run keeps its trained weights and its start row
        if fresh:
            self.init_projection()
        self.model.head.on_train_start(self.context)
        if fresh and self.rank == 0 and t.epochs > 0:
            self.evaluate_start()
        if not (self.run_dir / ckpt.WEIGHTS).exists() and self.rank == 0:
            # evaluate as built (epochs=0), and what a run that stops before its first epoch returns
            ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch=-1)
        if t.epochs > 0:
            self.stopped = nothing_to_learn(self.optimizer, t)
        skipped = self.warmup.skipped()
        if skipped:
            log.info("%s", skipped)
        warm = None
        while self.epoch < t.epochs and self.stopped is None:
            epoch, start = self.epoch, time.time()
            if self.warmup.active(epoch) != warm:
                warm = self.warmup.active(epoch)
                self.warmup.apply(warm, self.training_step)
                if self.warmup.backbone_trainable and self.warmup.epochs and self.rank == 0:
                    log.info("epoch %d: %s", epoch, self.warmup.describe(warm))
            self.context.epoch = epoch
            lr_factor = set_epoch_lr(self.optimizer, t, epoch)
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
            self.record.history.append(row)
            if self.rank == 0:
                if self.record.improves(epoch, metrics, has_val=self.splits.val is not None):
                    ckpt.save_weights(self.run_dir, self.model, self.num_classes, epoch)
                self.record.write_history()
                self.record.save_resume(epoch, self.model, self.optimizer, self.criterion)
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
            self.record.next_epoch += 1
        if warm:
            self.warmup.apply(False, self.training_step)
        if self.rank == 0 and self.record.history and self.stopped:
            self.record.write_history()  # stopped before an epoch completed: the start row still goes on record
        if self.distributed:
            ddp.barrier()
        metrics = self.finish() if self.rank == 0 else {}
        if self.stopped and "not finite" in self.stopped:
            raise TrainingError(f"{self.stopped}. Run stopped: {self.record.verdict(metrics)}")
        return metrics

    def finish(self) -> dict:
        """Reload the best weights, score them on the test classes, write metrics and artifacts."""
        from core.artifacts import embed_and_score, write_artifacts

        t = self.cfg.train
        model, _ = ckpt.load_run(self.run_dir, self.device)
        net = model if self.cut is None else train_features.FromCut(model, self.cut)
        test, parts = embed_and_score(net, self.splits, self.device, t.recall_ks, progress=self.progress)
        metrics = {**self.record.result(t, test), "num_train_classes": self.num_classes,
                   "train_images": len(self.splits.train), "device": str(self.device), "warmup_epochs": self.warmup.epochs}
        if self.feature_cache:
            metrics["feature_cache"] = self.feature_cache
        metrics["unreadable"] = sorted({str(ds.path(i)) for _, ds in data_parts(self.splits) for i in getattr(ds, "bad", ())})
        if self.stopped:
            metrics["stopped"] = self.stopped
            log.error("run stopped early: %s", self.stopped)
        for line in closing_summary(metrics, self.splits):
            log.info("%s", line)
        write_artifacts(self.run_dir, parts)
        # metrics.json last: it marks the run finished, so a run killed while finishing never shows
        # new weights beside the previous artifacts
        write_json(self.run_dir / ckpt.METRICS, metrics)
        return metrics

def train(cfg: RunConfig, run_dir: str | Path, progress: Progress | None = None) -> dict:
    return Trainer(cfg, run_dir, progress).fit()
