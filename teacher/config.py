"""Teacher presets. Each fills a TrainConfig through ``_teacher``; ``--config NAME`` picks one."""

from __future__ import annotations

from dataclasses import asdict

from pbrforge.config import DataConfig, LossConfig, OptimConfig, TrainConfig, TrainingConfig, register_config
from pbrforge.families import ModelFamily
from pbrforge.teacher.model import MultiViewPBRGenerator, TeacherConfig

FAMILY = ModelFamily("teacher", TeacherConfig, MultiViewPBRGenerator, train_command="teacher-train")


def _teacher(
    model: TeacherConfig,
    data: DataConfig | None = None,
    loss: LossConfig | None = None,
    optim: OptimConfig | None = None,
    training: TrainingConfig | None = None,
) -> TrainConfig:
    return TrainConfig(
        "teacher",
        asdict(model),
        data or DataConfig(),
        loss or LossConfig(),
        optim or OptimConfig(),
        training or TrainingConfig(),
    )


@register_config
def default() -> TrainConfig:
    """resnet50, ViT depth 4, GAN from epoch 5."""
    return _teacher(
        TeacherConfig("resnet50", vit_depth=4), training=TrainingConfig(gan=True, gan_start_epoch=5)
    )


@register_config
def quick_test() -> TrainConfig:
    """resnet18, ViT depth 2, 128 px: minutes on a CPU."""
    model = TeacherConfig(
        "resnet18",
        image_size=128,
        output_size=128,
        vit_dim=128,
        vit_heads=4,
        vit_depth=2,
        decoder_channels=(128, 64, 32, 32),
    )
    return _teacher(
        model,
        optim=OptimConfig(lr=1e-3, warmup_epochs=0.5),
        training=TrainingConfig(epochs=10, batch_size=4, gan=False),
    )


@register_config
def lightweight() -> TrainConfig:
    """resnet34 without the GAN."""
    return _teacher(TeacherConfig("resnet34", vit_depth=2), training=TrainingConfig(gan=False))


@register_config
def high_quality() -> TrainConfig:
    """resnet101, deeper and wider ViT, 512 px."""
    model = TeacherConfig("resnet101", image_size=512, output_size=512, vit_dim=384, vit_heads=8, vit_depth=8)
    return _teacher(model, training=TrainingConfig(epochs=100, batch_size=4, gan=True, gan_start_epoch=10))


@register_config
def fast_iteration() -> TrainConfig:
    """The plain conv encoder, small ViT, no GAN, high LR: for trying ideas."""
    model = TeacherConfig("unet", vit_dim=128, vit_heads=4, vit_depth=1, decoder_channels=(128, 64, 32, 32))
    return _teacher(
        model, optim=OptimConfig(lr=1e-3, scheduler="none"), training=TrainingConfig(epochs=20, gan=False)
    )


@register_config
def normal_focused() -> TrainConfig:
    """Default architecture with the normal and rendering terms weighted up."""
    loss = LossConfig(
        l1={"albedo": 0.5, "roughness": 0.5, "metallic": 0.5, "normal": 2.0}, normal_angular=2.0, render=1.0
    )
    return _teacher(TeacherConfig("resnet50", vit_depth=4), loss=loss, training=TrainingConfig(gan=True))
