"""Distil a mobile student from teacher shards plus ground truth (the teacher never runs here).

Examples:
    python student/train.py --config student_mnv3_plk_512 --shards shards/ --data data/demo \\
        --output runs/student --checkpoint-dir runs/student/ckpt
    python student/train.py --config student_mnv3_vit_512 --image-size 64 --epochs 2 --shards shards/ \\
        --data data/demo --output runs/tiny
    torchrun --nproc_per_node 2 student/train.py --config student_mnv3_plk_512 --shards shards/ \\
        --data data/demo --output runs/ddp
"""

from __future__ import annotations

from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import (
    MAX_SIDE,
    Command,
    apply_train_options,
    data_option,
    examples_epilog,
    old_spellings,
    train_options,
)


@click.command("student-train", cls=Command, epilog=examples_epilog(__doc__))
@click.option(
    "--config",
    "config_name",
    required=True,
    help="A student preset, or a .py file whose get_config() returns a TrainConfig; an unknown name lists the presets.",
)
@old_spellings("--shards", "--shards-dir")
@click.option(
    "--shards",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Teacher shards, written by `pbrforge shards` (teacher_infer.py).",
)
@data_option("--input-dir", help="The data set the shards came from.")
@click.option(
    "--image-size",
    type=click.IntRange(32, MAX_SIDE),
    default=None,
    help="Override the preset's input size, a multiple of 32 (tests, demos).",
)
@click.option("--render-curriculum", type=click.IntRange(0, 2), default=None)
@train_options
@user_errors
def main(
    config_name: str,
    shards: Path,
    data: Path,
    image_size: int | None,
    render_curriculum: int | None,
    output_dir: Path,
    checkpoint_dir: Path | None,
    resume: Path | None,
    device: str,
    batch_size: int | None,
    epochs: int | None,
    max_steps_per_epoch: int | None,
    extra: tuple[str, ...],
    quiet: bool,
) -> None:
    """Train a student on teacher shards and true maps: loss = a * L(teacher) + (1 - a) * L(truth)."""
    from pbrforge.config import load_config
    from pbrforge.dataset import scan_dataset
    from pbrforge.distributed import init_distributed, resolve_device
    from pbrforge.models import model_config
    from pbrforge.shards import DistillDataset, ShardSampler
    from pbrforge.trainer import Trainer

    cfg = load_config(config_name, family="student")
    if image_size is not None:
        cfg = cfg.override({"model.image_size": image_size})
    cfg = apply_train_options(cfg, batch_size, epochs, render_curriculum, max_steps_per_epoch, extra)
    dev = resolve_device(device)
    info = init_distributed(dev)
    scan_dataset(data, deep=True)  # every view and map decoded and checked before anything is written
    train_set = DistillDataset.for_config(data, shards, "train", cfg)
    val_set = DistillDataset.for_config(data, shards, "val", cfg, check_hashes=False)
    sampler = ShardSampler(train_set, cfg.training.seed, info.world, info.rank)
    teacher = train_set.manifest["teacher"]
    trainer = Trainer(
        cfg,
        train_set,
        val_set,
        output_dir,
        checkpoint_dir or output_dir / "checkpoints",
        dev,
        sampler=sampler,
        progress=not quiet,
        extra_checkpoint={
            "distilled_from": {"sha256": teacher["sha256"], "checkpoint": teacher["checkpoint"]}
        },
    )
    if resume:
        trainer.resume(resume)
    final = trainer.fit()
    if info.main:
        sizes = model_config(cfg)
        click.echo(
            f"done: {cfg.name} {sizes.image_size}->{sizes.output_size} on {dev}, {len(train_set)} train / "
            f"{len(val_set)} val; last val loss {final.get('val/loss', float('nan')):.4f}; "
            f"checkpoints in {trainer.checkpoint_dir}"
        )


if __name__ == "__main__":
    main()
