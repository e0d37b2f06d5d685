"""Student training presets: one per registered student, distillation on (alpha = 0.7), GAN off."""

from __future__ import annotations

from dataclasses import asdict

from pbrforge.config import DataConfig, LossConfig, OptimConfig, TrainConfig, TrainingConfig, register_config
from pbrforge.families import ModelFamily
from pbrforge.student.model import STUDENTS, PBRStudent, StudentConfig

FAMILY = ModelFamily("student", StudentConfig, PBRStudent, train_command="student-train")

DISTILL_ALPHA = 0.7


def student_train_config(model: StudentConfig, name: str) -> TrainConfig:
    """The one builder behind every student preset."""
    return TrainConfig(
        "student",
        asdict(model),
        DataConfig(),
        LossConfig(distill_alpha=DISTILL_ALPHA),
        OptimConfig(lr=1e-3, warmup_epochs=1, scheduler="cosine"),
        TrainingConfig(epochs=30, batch_size=8, gan=False),
        name=name,
    )


def _register(name: str) -> None:
    def preset() -> TrainConfig:
        return student_train_config(STUDENTS[name](), name)

    preset.__name__ = name
    register_config(preset)


for _name in STUDENTS:
    _register(_name)
