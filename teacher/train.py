"""Train the multi-view teacher on a generated data set.

Examples:
    python teacher/train.py --input-dir data/demo --output-dir runs/teacher --config quick_test
    python teacher/train.py --input-dir data/demo --output-dir runs/teacher --config default --render-curriculum 2
    python teacher/train.py --input-dir data/demo --output-dir runs/teacher --resume runs/teacher/checkpoints/latest.pt
    torchrun --nproc_per_node 2 teacher/train.py --input-dir data/demo --output-dir runs/ddp --config quick_test
"""

from __future__ import annotations

from pathlib import Path

import click

from pbrforge.cli import examples_epilog
from pbrforge.config import TrainConfig, list_configs, load_config
from pbrforge.dataset import PBRDataset
from pbrforge.errors import user_errors
from pbrforge.trainer import Trainer, resolve_device


def apply_cli_overrides(
    cfg: TrainConfig,
    batch_size: int | None,
    epochs: int | None,
    curriculum: int | None,
    max_steps: int | None,
    extra: tuple[str, ...] = (),
) -> TrainConfig:
    """Command-line flags win over the preset; ``--set section.key=value`` reaches any other field."""
    import json

    overrides: dict = {}
    if batch_size is not None:
        overrides["training.batch_size"] = batch_size
    if epochs is not None:
        overrides["training.epochs"] = epochs
    if curriculum is not None:
        overrides["data.curriculum"] = curriculum
    if max_steps is not None:
        overrides["training.max_steps_per_epoch"] = max_steps
    for item in extra:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return cfg.override(overrides)


def sync_sizes(cfg: TrainConfig) -> TrainConfig:
    """The data sizes follow the model's, so one ``--set model.image_size=..`` is enough."""
    return cfg.override(
        {"data.image_size": cfg.model["image_size"], "data.output_size": cfg.model["output_size"]}
    )


def common_options(fn):
    options = [
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path),
            required=True,
            help="Logs, metrics.jsonl, grids (and checkpoints unless --checkpoint-dir).",
        ),
        click.option(
            "--checkpoint-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Where latest.pt / best.pt go [default: OUTPUT_DIR/checkpoints].",
        ),
        click.option(
            "--resume", type=click.Path(path_type=Path), default=None, help="Continue from a checkpoint."
        ),
        click.option(
            "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
        ),
        click.option("--batch-size", type=int, default=None),
        click.option("--epochs", type=int, default=None),
        click.option(
            "--max-steps-per-epoch", type=int, default=None, help="Cap steps per epoch (quick runs)."
        ),
        click.option(
            "--set",
            "extra",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config field, e.g. --set model.vit_depth=1 --set optim.lr=1e-3.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


@click.command("teacher-train", epilog=examples_epilog(__doc__))
@click.option("--input-dir", type=click.Path(path_type=Path), required=True, help="Data root from datagen.")
@click.option(
    "--config",
    "config_name",
    default="quick_test",
    show_default=True,
    help=f"Preset ({', '.join(list_configs())}) or a .py file with get_config().",
)
@click.option(
    "--render-curriculum",
    type=click.IntRange(0, 2),
    default=None,
    help="0 clean, 1 clean + dirty, 2 dirty [default: the preset's].",
)
@common_options
@user_errors
def main(
    input_dir: Path,
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
    cfg = load_config(config_name, family="teacher")
    cfg = sync_sizes(
        apply_cli_overrides(cfg, batch_size, epochs, render_curriculum, max_steps_per_epoch, extra)
    )
    dev = resolve_device(device)
    d = cfg.data
    train_set = PBRDataset(
        input_dir, "train", d.image_size, d.output_size, d.curriculum, d.val_fraction, d.split_seed
    )
    val_set = PBRDataset(
        input_dir, "val", d.image_size, d.output_size, d.curriculum, d.val_fraction, d.split_seed
    )
    trainer = Trainer(
        cfg,
        train_set,
        val_set,
        output_dir,
        checkpoint_dir or output_dir / "checkpoints",
        dev,
        progress=not quiet,
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
