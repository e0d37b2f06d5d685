"""Tiny configurations for tests: every model family at a size that trains in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pbrforge.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]  # the repository: stage scripts are run from here as a user would
QAT_STEPS = 30  # quantization-aware fine-tuning steps of the tiny int8 .pte


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <script> args`` in a fresh process (for what must not touch the test process, or runs as a file)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=timeout
    )


def run_torchrun(script: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` of a stage script on the CPU (gloo), one OpenMP thread per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run(
        [*cmd, str(ROOT / script), *args],
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


TINY_TEACHER = {
    "encoder": "unet",
    "image_size": 64,
    "output_size": 64,
    "vit_dim": 32,
    "vit_heads": 2,
    "vit_depth": 1,
    "decoder_channels": [32, 16, 16, 16],
    "unet_channels": [8, 16, 16, 32, 32],
}


def tiny_teacher_config(**training) -> TrainConfig:
    over = {f"model.{k}": v for k, v in TINY_TEACHER.items()}
    over |= {
        "data.val_fraction": 0.3,
        "training.batch_size": 2,
        "training.epochs": 2,
        "training.max_steps_per_epoch": 2,
        "training.disc_ndf": 8,
        "training.disc_layers": 2,
    }
    over |= {f"training.{k}": v for k, v in training.items()}
    return load_config("quick_test").override(over)


def set_args(cfg_over: dict) -> list[str]:
    import json

    out = []
    for k, v in cfg_over.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


TINY_TEACHER_ARGS = set_args(
    {f"model.{k}": v for k, v in TINY_TEACHER.items()} | {"training.disc_ndf": 8, "data.val_fraction": 0.3}
)


def tiny_student_args(data, shards, output_dir) -> list[str]:
    """`pbrforge student-train` arguments for a PLK student at 32 px, SR x1, two steps (matches the tiny shards)."""
    return [
        "student-train",
        "--config",
        "student_mnv3_plk_512",
        "--image-size",
        "32",
        "--shards",
        str(shards),
        "--data",
        str(data),
        "--output",
        str(output_dir),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--max-steps-per-epoch",
        "2",
        "--quiet",
        "--set",
        "data.val_fraction=0.3",
        "--set",
        "model.sr_scale=1",
    ]
