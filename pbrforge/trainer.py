"""One trainer for teacher and student: AMP, optional GAN, schedules, exact resume, DDP, logs and grids.

Exact resume: data order comes from a DistributedSampler-style permutation seeded by (seed, epoch), and
the checkpoint holds every RNG the step uses, so a run stopped after any epoch and resumed ends with
the same weights as one that never stopped (on a deterministic device).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from pbrforge.config import OptimConfig, TrainConfig
from pbrforge.contract import INPUT_MEAN, INPUT_STD, to_preview
from pbrforge.distributed import barrier, init_distributed, unwrap
from pbrforge.errors import ConfigError, PBRForgeError
from pbrforge.fileio import atomic_path, exclusive, remove_stale_temps
from pbrforge.losses import gan_d_loss, gan_g_loss, map_losses
from pbrforge.metrics import MapMetrics
from pbrforge.models import (
    CHECKPOINT_FORMAT,
    build_model,
    config_of,
    load_checkpoint,
    load_state_strict,
    shipped_state,
)

_logger = logging.getLogger(__name__)


class TrainingError(PBRForgeError):
    """Training cannot go on (a NaN loss, a mismatched resume)."""


# --------------------------------------------------------------------------- LR schedule


class LRSchedule:
    """Warmup then cosine / step / plateau / none, stepped per optimizer step; state is plain numbers."""

    KINDS = ("cosine", "step", "plateau", "none")

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int):
        if cfg.scheduler not in self.KINDS:
            raise ConfigError(f"unknown scheduler {cfg.scheduler!r}; known: {', '.join(self.KINDS)}")
        self.opt, self.cfg = optimizer, cfg
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.spe, self.total = max(1, steps_per_epoch), max(1, steps_per_epoch * epochs)
        self.steps, self.plateau_factor, self.best, self.bad = 0, 1.0, math.inf, 0
        self.apply()

    def factor(self) -> float:
        warm = self.cfg.warmup_epochs * self.spe
        if warm and self.steps < warm:
            return (self.steps + 1) / warm
        progress = min(1.0, (self.steps - warm) / max(1.0, self.total - warm))
        if self.cfg.scheduler == "cosine":
            m = self.cfg.min_lr_ratio
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.cfg.scheduler == "step":
            return self.cfg.gamma ** ((self.steps // self.spe) // max(1, self.cfg.step_epochs))
        if self.cfg.scheduler == "plateau":
            return self.plateau_factor
        return 1.0

    def apply(self) -> None:
        f = self.factor()
        for g, b in zip(self.opt.param_groups, self.base, strict=True):
            g["lr"] = b * f

    def step(self) -> None:
        self.steps += 1
        self.apply()

    def epoch_end(self, metric: float) -> None:
        if self.cfg.scheduler != "plateau":
            return
        if metric < self.best - 1e-6:
            self.best, self.bad = metric, 0
        else:
            self.bad += 1
            if self.bad > self.cfg.plateau_patience:
                self.plateau_factor *= self.cfg.gamma
                self.bad = 0
        self.apply()

    def state_dict(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "bad": self.bad,
        }

    def load_state_dict(self, s: dict[str, float]) -> None:
        self.steps, self.plateau_factor = int(s["steps"]), float(s["plateau_factor"])
        self.best, self.bad = float(s["best"]), int(s["bad"])
        self.apply()


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Trains ``build_model(cfg)`` on datasets yielding {"views", "target"[, "teacher"]} dicts.

    Args:
        cfg: the full TrainConfig (saved in every checkpoint).
        train_set, val_set: map-style datasets.
        output_dir: TensorBoard logs, metrics.jsonl, grids.
        checkpoint_dir: latest.pt, best.pt, epoch_N.pt.
        sampler: optional sampler for train_set (e.g. shard-ordered); must have ``set_epoch``.
        make_discriminator: builds the GAN critic (the stage that trains with one supplies it); required
            when ``training.gan`` is on. The critic is called as ``critic(maps, views)``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train_set: Dataset,
        val_set: Dataset | None,
        output_dir: Path,
        checkpoint_dir: Path,
        device: torch.device,
        sampler: Sampler | None = None,
        progress: bool = True,
        extra_checkpoint: dict[str, Any] | None = None,
        make_discriminator: Callable[[], nn.Module] | None = None,
    ):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.dist = init_distributed(device)
        self.output_dir, self.checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
        self.extra_checkpoint = extra_checkpoint or {}
        t = cfg.training
        torch.manual_seed(t.seed)
        self.model = build_model(cfg).to(device)
        # the averaged weights are what validation sees and what checkpoints ship; the raw ones resume training
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay, use_warmup=True) if t.ema_decay > 0 else None
        if t.gan and make_discriminator is None:
            raise ConfigError(
                "training.gan is on, but this command trains without a discriminator; set it false"
            )
        self.disc: nn.Module | None = (
            make_discriminator().to(device) if t.gan and make_discriminator else None
        )
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
        )
        self.opt_d = (
            torch.optim.AdamW(
                self.disc.parameters(), lr=o.d_lr, betas=(0.5, 0.999), weight_decay=o.weight_decay
            )
            if self.disc
            else None
        )
        self.amp = t.amp and device.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)
            if self.disc is not None:
                self.disc = DDP(self.disc, device_ids=ids)
        self.train_set, self.val_set = train_set, val_set
        self.sampler = sampler or DistributedSampler(
            train_set,
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=t.seed,
            drop_last=False,
        )
        self.loader = DataLoader(
            train_set,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            drop_last=len(cast(Sized, train_set)) > t.batch_size * self.dist.world,
        )
        steps = (
            len(self.loader) if not t.max_steps_per_epoch else min(len(self.loader), t.max_steps_per_epoch)
        )
        self.steps_per_epoch = max(1, steps)
        self.sched_g = LRSchedule(self.opt_g, o, self.steps_per_epoch, t.epochs)
        self.sched_d = LRSchedule(self.opt_d, o, self.steps_per_epoch, t.epochs) if self.opt_d else None
        self.loss_gen = torch.Generator().manual_seed(t.seed + 1)  # random shots of the rendering loss
        # the rooms the rendering loss lights with: the data set's own environments (none: an overcast dome)
        self.environments = dict(getattr(train_set, "environments", {}) or {})
        self.epoch, self.global_step, self.best = 0, 0, math.inf
        self.writer: Any = None  # opened by fit(): nothing is written before resume() has checked its input

    @property
    def eval_model(self) -> nn.Module:
        """The weights to judge and ship: the EMA when ``training.ema_decay`` > 0, else the trained ones."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "family": self.cfg.family,
            "config": self.cfg.to_dict(),  # the one record of sizes and architecture
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else {},
            "disc": unwrap(self.disc).state_dict() if self.disc else {},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d else {},
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict() if self.sched_d else {},
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": self.best,
            "rng": {
                "torch": torch.get_rng_state(),
                "loss": self.loss_gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            **self.extra_checkpoint,
        }

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / name
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        return path

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of this architecture; its trainer state must be whole."""
        ckpt = load_checkpoint(path, self.device)
        saved = config_of(ckpt, path)
        if saved.family != self.cfg.family or saved.model != self.cfg.model:
            raise ConfigError(
                f"cannot resume from {path}: it holds a {saved.family} {saved.name} model, "
                f"this run builds a {self.cfg.family} {self.cfg.name} model of another architecture"
            )
        try:
            self._restore(ckpt, path)
        except PBRForgeError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ConfigError(
                f"cannot resume from {path}: its trainer state is incomplete or malformed ({type(e).__name__}: {e})"
            ) from e

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        load_state_strict(unwrap(self.model), ckpt["model"], str(path))
        if self.ema is not None:  # a checkpoint saved without EMA starts the average at its weights
            load_state_strict(self.ema.module, shipped_state(ckpt), str(path))
        if self.disc is not None and ckpt["disc"]:
            load_state_strict(unwrap(self.disc), ckpt["disc"], str(path))
        self.opt_g.load_state_dict(ckpt["opt_g"])
        if self.opt_d and ckpt["opt_d"]:
            self.opt_d.load_state_dict(ckpt["opt_d"])
        self.sched_g.load_state_dict(ckpt["sched_g"])
        if self.sched_d and ckpt["sched_d"]:
            self.sched_d.load_state_dict(ckpt["sched_d"])
        self.scaler_g.load_state_dict(ckpt["scaler_g"])
        self.scaler_d.load_state_dict(ckpt["scaler_d"])
        self.epoch, self.global_step, self.best = ckpt["epoch"] + 1, ckpt["global_step"], ckpt["best"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.loss_gen.set_state(ckpt["rng"]["loss"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    # ------------------------------------------------------------------ steps
    def objective(self, pred: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss against the truth, blended with loss against the teacher's maps when distilling."""
        truth = map_losses(pred, batch["target"], self.cfg.loss, self.loss_gen, self.environments)
        alpha = self.cfg.loss.distill_alpha
        if alpha <= 0 or "teacher" not in batch:
            return truth
        teach = map_losses(pred, batch["teacher"], self.cfg.loss, self.loss_gen, self.environments)
        terms = {f"gt/{k}": v for k, v in truth.items()} | {f"teacher/{k}": v for k, v in teach.items()}
        terms["total"] = alpha * teach["total"] + (1 - alpha) * truth["total"]
        return terms

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value):
            raise TrainingError(
                f"{what} became {value.item()} at epoch {self.epoch} step {self.global_step}; "
                "stopping (lower the learning rate or check the data)"
            )

    def _backward_step(
        self, loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params
    ) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        scaler.step(opt)
        scaler.update()

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        t = self.cfg.training
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        views = batch["views"]
        disc, opt_d, sched_d = self.disc, self.opt_d, self.sched_d
        gan_on = disc is not None and self.epoch >= t.gan_start_epoch
        logs: dict[str, float] = {}
        autocast = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)
        if gan_on and disc is not None and opt_d is not None and sched_d is not None:
            with torch.no_grad(), autocast:
                fake = self.model(views)
            disc.requires_grad_(True)
            for _ in range(max(1, t.d_steps_per_g_step)):
                with autocast:
                    d_loss = gan_d_loss(
                        disc(batch["target"], views), disc(fake, views), self.cfg.loss.gan_loss
                    )
                self._check_finite(d_loss, "the discriminator loss")
                self._backward_step(d_loss, opt_d, self.scaler_d, disc.parameters())
            sched_d.step()
            logs["d_loss"] = d_loss.item()
            disc.requires_grad_(False)
        with autocast:
            pred = self.model(views)
        terms = self.objective(pred.float(), batch)
        if gan_on and disc is not None:
            with autocast:
                terms["gan"] = self.cfg.loss.gan * gan_g_loss(disc(pred, views), self.cfg.loss.gan_loss)
            terms["total"] = terms["total"] + terms["gan"].float()
        self._check_finite(terms["total"], "the training loss")
        self._backward_step(terms["total"], self.opt_g, self.scaler_g, self.model.parameters())
        self.sched_g.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.global_step + 1)
        logs.update({k: v.item() for k, v in terms.items()})
        return logs

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Any] | None]:
        """Metrics and mean loss over the whole validation split (rank 0 only), plus a batch for the grid."""
        if self.val_set is None:
            return {}, None
        val_set = self.val_set
        model = self.eval_model.eval()
        metrics, losses, first = MapMetrics(), [], None
        gen = torch.Generator().manual_seed(12345)  # fixed shots: val loss comparable across epochs
        loader = DataLoader(val_set, batch_size=self.cfg.training.batch_size, shuffle=False)
        for batch in loader:
            views, target = batch["views"].to(self.device), batch["target"].to(self.device)
            pred = model(views).float()
            metrics.update(pred, target)
            losses.append(
                map_losses(pred, target, self.cfg.loss, gen, self.environments)["total"].item() * len(views)
            )
            if first is None:
                first = {"views": views.cpu(), "pred": pred.cpu(), "target": target.cpu()}
        self.model.train()
        out = metrics.compute()
        out["loss"] = sum(losses) / max(1, len(cast(Sized, val_set)))
        return out, first

    # ------------------------------------------------------------------ the loop
    def fit(self, max_seconds: float | None = None) -> dict[str, float]:
        """Train to ``training.epochs``, or until another epoch would overrun ``max_seconds`` (wall clock).

        Holds a lock on the output folder, so a second run into it is refused rather than raced.
        """
        if not self.dist.main:
            return self._fit(max_seconds)
        with exclusive(self.output_dir):
            # temporary files a killed run left behind
            for folder in (self.output_dir, self.output_dir / "grids", self.checkpoint_dir):
                remove_stale_temps(folder)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tb"))
            return self._fit(max_seconds)

    def _fit(self, max_seconds: float | None) -> dict[str, float]:
        t = self.cfg.training
        last: dict[str, float] = {}
        self.model.train()
        began, done = time.perf_counter(), 0
        while self.epoch < t.epochs:
            spent = time.perf_counter() - began
            if max_seconds is not None and done and spent + spent / done > max_seconds:
                break
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch)
            sums: dict[str, float] = {}
            start = time.perf_counter()
            bar = tqdm(
                self.loader,
                total=self.steps_per_epoch,
                desc=f"epoch {self.epoch + 1}/{t.epochs}",
                disable=not (self.progress and self.dist.main),
                leave=False,
            )
            n = 0
            for step, batch in enumerate(bar):
                if step >= self.steps_per_epoch:
                    break
                logs = self.train_step(batch)
                n += 1
                self.global_step += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{logs['total']:.4f}", lr=f"{self.opt_g.param_groups[0]['lr']:.2e}")
                if self.writer and self.global_step % 10 == 0:
                    for k, v in logs.items():
                        self.writer.add_scalar(f"train_step/{k}", v, self.global_step)
            bar.close()
            record: dict[str, Any] = {
                "epoch": self.epoch,
                "step": self.global_step,
                "lr": self.opt_g.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
            record |= {f"train/{k}": v / max(1, n) for k, v in sums.items()}
            if self.dist.main:
                has_val = self.val_set is not None and len(cast(Sized, self.val_set)) > 0
                val, batch = self.validate() if has_val else ({}, None)
                record |= {f"val/{k}": v for k, v in val.items()}
                score = val.get("loss", record["train/total"])
                self.sched_g.epoch_end(score)
                if self.sched_d:
                    self.sched_d.epoch_end(score)
                self._log_epoch(record, batch)
                # best.pt before latest.pt: a run killed between the two resumes from the older latest.pt,
                # redoes this epoch and writes best.pt again, so the best weights are never lost
                if score < self.best:
                    self.best = score
                    self.save("best.pt")
                self.save("latest.pt")
                if t.checkpoint_every and (self.epoch + 1) % t.checkpoint_every == 0:
                    self.save(f"epoch_{self.epoch + 1:04d}.pt")
            barrier(self.dist)
            last = record
            self.epoch += 1
            done += 1
        if self.writer:
            self.writer.close()
        return last

    def _log_epoch(self, record: dict[str, Any], batch: dict[str, Any] | None) -> None:
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self.writer
        for k, v in record.items():
            if writer is not None and (k.startswith(("train/", "val/")) or k == "lr"):
                writer.add_scalar(k, v, self.epoch)
        shown = {
            k: round(v, 4)
            for k, v in record.items()
            if k
            in (
                "train/total",
                "val/loss",
                "val/albedo/psnr",
                "val/normal/angle_mean_deg",
                "val/rerender/rmse",
            )
        }
        _logger.info(f"epoch {self.epoch + 1}: {shown}")  # the epoch's bar is closed by now
        every = self.cfg.training.grid_every
        if (
            batch is not None
            and every
            and ((self.epoch + 1) % every == 0 or self.epoch + 1 == self.cfg.training.epochs)
        ):
            grid = comparison_grid(batch["views"], batch["pred"], batch["target"])
            path = self.output_dir / "grids" / f"epoch_{self.epoch + 1:04d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")
            if writer is not None:
                writer.add_image("val/grid", grid, self.epoch, dataformats="HWC")


def denormalize_views(views: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(INPUT_MEAN).view(3, 1, 1)
    std = torch.tensor(INPUT_STD).view(3, 1, 1)
    return (views.cpu() * std + mean).clamp(0, 1)


def comparison_grid(
    views: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, rows: int = 4
) -> np.ndarray:
    """uint8 (H, W, 3): per sample, views | predicted maps | true maps | error heat-map."""
    import matplotlib

    cmap = matplotlib.colormaps["magma"]
    size = pred.shape[-1]
    lines = []
    for i in range(min(rows, len(pred))):
        v = torch.nn.functional.interpolate(
            denormalize_views(views[i]), size=(size, size), mode="bilinear", antialias=True
        )
        tiles = [x.permute(1, 2, 0).numpy() for x in v]
        tiles += to_preview(pred[i]) + to_preview(target[i])
        err = (pred[i] - target[i]).abs().mean(0).clamp(0, 0.5).numpy() / 0.5
        tiles.append(cmap(err)[..., :3])
        lines.append(np.concatenate(tiles, axis=1))
    return (np.concatenate(lines, axis=0) * 255).round().astype(np.uint8)
