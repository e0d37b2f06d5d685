"""Train the multi-view teacher on a generated data set.

Examples:
    python teacher/train.py --data data/demo --output runs/teacher --config quick_test
    python teacher/train.py --data data/demo --output runs/teacher --config default --render-curriculum 2
    python teacher/train.py --data data/demo --output runs/teacher --resume runs/teacher/checkpoints/latest.pt
    torchrun --nproc_per_node 2 teacher/train.py --data data/demo --output runs/ddp --config quick_test
"""

from __future__ import annotations

from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import Command, apply_train_options, data_option, examples_epilog, train_options


@click.command("teacher-train", cls=Command, epilog=examples_epilog(__doc__))
@data_option("--input-dir")
@click.option(
    "--config",
    "config_name",
    default="quick_test",
    show_default=True,
    help="A teacher preset, or a .py file whose get_config() returns a TrainConfig; an unknown name lists the presets.",
)
@click.option(
    "--render-curriculum",
    type=click.IntRange(0, 2),
    default=None,
    help="0 clean, 1 clean + dirty, 2 dirty [default: the preset's].",
)
@train_options
@user_errors
def main(
    data: Path,
    config_name: str,
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
    """Train the multi-view teacher (DDP under torchrun)."""
    from pbrforge.config import load_config
    from pbrforge.dataset import PBRDataset, scan_dataset
    from pbrforge.distributed import resolve_device
    from pbrforge.teacher.model import discriminator_factory
    from pbrforge.trainer import Trainer

    cfg = load_config(config_name, family="teacher")
    cfg = apply_train_options(cfg, batch_size, epochs, render_curriculum, max_steps_per_epoch, extra)
    dev = resolve_device(device)
    scan_dataset(data, deep=True)  # every view and map decoded and checked before anything is written
    train_set = PBRDataset.for_config(data, "train", cfg)
    val_set = PBRDataset.for_config(data, "val", cfg)
    trainer = Trainer(
        cfg,
        train_set,
        val_set,
        output_dir,
        checkpoint_dir or output_dir / "checkpoints",
        dev,
        progress=not quiet,
        make_discriminator=discriminator_factory(cfg),
    )
    if resume:
        trainer.resume(resume)
    final = trainer.fit()
    if trainer.dist.main:
        click.echo(
            f"done: {cfg.name} on {dev}, {len(train_set)} train / {len(val_set)} val samples; "
            f"last epoch val loss {final.get('val/loss', float('nan')):.4f}; "
            f"checkpoints in {trainer.checkpoint_dir}"
        )


if __name__ == "__main__":
    main()
