import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_TEACHER, TINY_TEACHER_ARGS, run_torchrun, tiny_teacher_config

from pbrforge.config import TrainConfig, list_configs, load_config
from pbrforge.contract import validate
from pbrforge.dataset import PBRDataset
from pbrforge.errors import ConfigError
from pbrforge.losses import (
    gan_d_loss,
    gan_g_loss,
    loss_captures,
    map_losses,
    normal_angular_loss,
    rendering_loss,
)
from pbrforge.models import build_model, load_checkpoint, model_from_checkpoint
from pbrforge.teacher.model import MultiViewPBRGenerator, PatchDiscriminator, TeacherConfig
from pbrforge.trainer import Trainer, TrainingError

ORDER_ATOL = 1e-5
# an old checkpoint must give the outputs it gave when saved; across CPUs the convolution kernels picked
# differ in summation order, so equality is to float32 rounding, not bit for bit (1.2e-7 seen on a Xeon)
SAVED_OUTPUT_ATOL = 1e-6


def tiny_model(**kw) -> MultiViewPBRGenerator:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_TEACHER.items()} | kw
    return MultiViewPBRGenerator(TeacherConfig(**values)).eval()


@pytest.mark.parametrize("encoder", ["unet", "resnet18"])
def test_shapes_and_ranges(encoder):
    model = tiny_model(encoder=encoder, output_size=96)
    out = model(torch.randn(2, 3, 3, 64, 64))
    assert out.shape == (2, 8, 96, 96)
    validate(out)


def test_view_order_invariance():
    torch.manual_seed(0)
    model = tiny_model(encoder="resnet18")
    views = torch.randn(2, 3, 3, 64, 64)
    ref = model(views)
    for perm in ([1, 2, 0], [2, 1, 0], [0, 2, 1]):
        torch.testing.assert_close(model(views[:, perm]), ref, atol=ORDER_ATOL, rtol=0)


def test_rejects_wrong_view_count():
    with pytest.raises(ValueError, match=r"\(B, 3, 3, H, W\)"):
        tiny_model()(torch.randn(1, 2, 3, 64, 64))


def test_discriminator_judges_patches_of_maps_given_views():
    """One logit per patch, depending on both the maps and the views it is conditioned on, with gradients
    reaching the maps (what the generator's adversarial loss needs)."""
    torch.manual_seed(0)
    d = PatchDiscriminator(n_layers=2, ndf=8).eval()
    maps = torch.rand(2, 8, 64, 64, requires_grad=True)
    views = torch.randn(2, 3, 3, 32, 32)
    logits = d(maps, views)
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1 and logits.shape[-2] > 1
    with torch.no_grad():
        assert not torch.allclose(d(maps.flip(-1), views), logits)
        assert not torch.allclose(d(maps, views + 1), logits)
    logits.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0


def _maps(seed=0, b=2, s=32):
    from pbrforge.contract import activate

    return activate(torch.randn(b, 8, s, s, generator=torch.Generator().manual_seed(seed)))


def test_losses_zero_on_identical_and_positive_otherwise():
    cfg = load_config("quick_test").loss
    a, b = _maps(0), _maps(1)
    same = map_losses(a, a, cfg, torch.Generator().manual_seed(0))
    assert all(v.abs().item() < 1e-5 for v in same.values()), same
    diff = map_losses(a, b, cfg, torch.Generator().manual_seed(0))
    assert set(diff) == {
        "l1_albedo",
        "l1_roughness",
        "l1_metallic",
        "l1_normal",
        "ssim_albedo",
        "normal_angular",
        "render",
        "total",
    }
    assert all(v.item() > 0 for v in diff.values())
    torch.testing.assert_close(diff["total"], sum(v for k, v in diff.items() if k != "total"))


def test_known_loss_values():
    n = torch.zeros(1, 3, 4, 4)
    n[:, 2] = 1
    assert normal_angular_loss(n, -n).item() == pytest.approx(2.0)
    a = _maps(0)
    b = a.clone()
    b[:, 3] = (b[:, 3] + 0.25).clamp(max=1)  # only roughness differs
    cfg = load_config("quick_test").loss
    terms = map_losses(a, b, cfg)
    assert terms["l1_albedo"].item() == 0 and terms["l1_roughness"].item() > 0
    shots = loss_captures(2, cfg, torch.Generator().manual_seed(0), None)
    assert rendering_loss(a, a, shots).item() == 0 and rendering_loss(a, b, shots).item() > 0
    real, fake = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert gan_d_loss(real, fake, "hinge").item() == 0
    assert gan_d_loss(fake, real, "hinge").item() == pytest.approx(6.0)
    assert gan_g_loss(fake, "hinge").item() == pytest.approx(2.0)
    assert gan_d_loss(real, fake, "bce").item() < gan_d_loss(fake, real, "bce").item()


def test_presets_build():
    names = list_configs()
    for required in (
        "default",
        "quick_test",
        "lightweight",
        "high_quality",
        "fast_iteration",
        "normal_focused",
    ):
        assert required in names
    cfg = load_config("default")
    assert (
        cfg.model["encoder"] == "resnet50"
        and cfg.model["vit_depth"] == 4
        and cfg.training.gan_start_epoch == 5
    )
    assert not load_config("lightweight").training.gan


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="known: .*quick_test"):
        load_config("quik_test")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("quick_test").override({"training.epoks": 3})
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict(load_config("quick_test").to_dict() | {"colour": 1})
    bad = load_config("quick_test").to_dict()
    bad["model"]["depth_of_field"] = 3
    with pytest.raises(ConfigError, match="depth_of_field"):
        build_model(TrainConfig.from_dict(bad))
    f = tmp_path / "my_config.py"
    f.write_text(
        "from pbrforge.config import load_config\n\ndef get_config():\n"
        "    return load_config('quick_test').override({'training.epochs': 7})\n"
    )
    assert load_config(str(f)).training.epochs == 7


def _trainer(tiny_data, tmp, cfg):
    from pbrforge.teacher.model import discriminator_factory

    train = PBRDataset.for_config(tiny_data, "train", cfg)
    val = PBRDataset.for_config(tiny_data, "val", cfg)
    return Trainer(
        cfg,
        train,
        val,
        tmp / "out",
        tmp / "ckpt",
        torch.device("cpu"),
        progress=False,
        make_discriminator=discriminator_factory(cfg),
    )


@pytest.mark.slow
def test_resume_gives_identical_weights(tiny_data, tmp_path):
    cfg = tiny_teacher_config(epochs=3, gan=True, gan_start_epoch=1, ema_decay=0.9)
    straight = _trainer(tiny_data, tmp_path / "a", cfg)
    straight.fit()
    first = _trainer(tiny_data, tmp_path / "b", cfg.override({"training.epochs": 1}))
    first.fit()
    resumed = _trainer(tiny_data, tmp_path / "c", cfg)
    resumed.resume(tmp_path / "b" / "ckpt" / "latest.pt")
    resumed.fit()
    a, c = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], c[k], atol=0, rtol=0, msg=f"{k} differs after resume")
    for k, v in straight.disc.state_dict().items():
        torch.testing.assert_close(v, resumed.disc.state_dict()[k], atol=0, rtol=0)
    for k, v in straight.ema.module.state_dict().items():
        torch.testing.assert_close(v, resumed.ema.module.state_dict()[k], atol=0, rtol=0, msg=f"EMA {k}")
    lines = (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "val/albedo/psnr" in json.loads(lines[-1])
    assert (tmp_path / "a" / "out" / "grids" / "epoch_0003.png").is_file()


def test_ema_weights_are_validated_and_shipped(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path, tiny_teacher_config(epochs=2, ema_decay=0.5))
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "ckpt" / "latest.pt")
    raw, ema = ckpt["model"], ckpt["ema"]
    assert set(raw) == set(ema)
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert moved, "the EMA should lag the trained weights"
    shipped, _, _ = model_from_checkpoint(tmp_path / "ckpt" / "latest.pt")
    for k, v in shipped.state_dict().items():
        torch.testing.assert_close(v, ema[k], atol=0, rtol=0)
    assert trainer.eval_model is trainer.ema.module


def test_checkpoint_is_plain_data(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path, tiny_teacher_config(epochs=1))
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "ckpt" / "latest.pt")  # weights_only=True inside
    assert ckpt["family"] == "teacher" and ckpt["epoch"] == 0
    model, cfg, _ = model_from_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert cfg.model["encoder"] == "unet"
    other = tiny_teacher_config().override({"model.vit_dim": 48})
    trainer2 = _trainer(tiny_data, tmp_path / "x", other)
    with pytest.raises(ConfigError, match="cannot resume"):
        trainer2.resume(tmp_path / "ckpt" / "latest.pt")
    from pbrforge.models import load_state_strict

    with pytest.raises(ConfigError, match="another architecture"):
        load_state_strict(build_model(other), ckpt["model"], "latest.pt")


def test_nan_loss_stops_with_sentence(tiny_data, tmp_path, monkeypatch):
    trainer = _trainer(tiny_data, tmp_path, tiny_teacher_config(epochs=1))
    monkeypatch.setattr(trainer, "objective", lambda pred, batch: {"total": pred.sum() * float("nan")})
    with pytest.raises(TrainingError, match="training loss became nan at epoch 0 step 0"):
        trainer.fit()


def _cli(args):
    from pbrforge.cli import main

    return CliRunner().invoke(main, args)


def test_train_cli_and_infer(tiny_data, tmp_path):
    r = _cli(
        [
            "teacher-train",
            "--data",
            str(tiny_data),
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "1",
            "--batch-size",
            "2",
            "--quiet",
            "--device",
            "cpu",
            *TINY_TEACHER_ARGS,
        ]
    )
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    r = _cli(
        [
            "teacher-infer",
            str(ckpt),
            "--data",
            str(tiny_data),
            "--sample-idx",
            "1",
            "--output",
            str(tmp_path / "pred"),
        ]
    )
    assert r.exit_code == 0, r.output
    from pbrforge.contract import read_material

    maps = read_material(tmp_path / "pred")
    assert maps.shape == (8, 64, 64)
    r = _cli(
        [
            "teacher-infer",
            str(ckpt),
            "--input",
            str(tiny_data / "input" / "clean" / "sample_0000"),
            "--align",
            "none",
            "--output",
            str(tmp_path / "pred2"),
        ]
    )
    assert r.exit_code == 0, r.output
    r = _cli(
        [
            "teacher-infer",
            str(ckpt),
            "--data",
            str(tiny_data),
            "--sample-idx",
            "999",
            "--output",
            str(tmp_path / "pred3"),
        ]
    )
    assert r.exit_code == 2 and "outside" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nope"], "unknown config preset"),
        (["--config", "student_mnv3_plk_512"], "pbrforge student-train"),
        (["--device", "cuda"], "no usable CUDA GPU"),
        (["--set", "training.nope=1"], "unknown config key"),
    ],
)
def test_train_cli_errors(tiny_data, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = _cli(
        [
            "teacher-train",
            "--data",
            str(tiny_data),
            "--output",
            str(tmp_path / "run"),
            "--quiet",
            *args,
        ]
    )
    assert r.exit_code == 2, r.output
    assert message in r.output


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    r = run_torchrun(
        "teacher/train.py",
        "--data",
        str(tiny_data),
        "--output",
        str(tmp_path / "ddp"),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--max-steps-per-epoch",
        "2",
        "--device",
        "cpu",
        "--quiet",
        *TINY_TEACHER_ARGS,
        "--set",
        "training.gan=true",
        "--set",
        "training.gan_start_epoch=1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    model_from_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pt")


def test_checkpoint_from_the_core_layout_still_loads(tmp_path):
    """A teacher saved by 0.1.0 (library in core/, sizes also in data and ``preprocessing``) rebuilds exactly."""
    from safetensors.torch import load_file

    from pbrforge.models import model_config, model_from_checkpoint

    fixtures = Path(__file__).parent / "fixtures"
    model, cfg, ckpt = model_from_checkpoint(fixtures / "teacher_saved_by_0.1.0_core_layout.pt")
    assert "image_size" in ckpt["config"]["data"] and "preprocessing" in ckpt  # it really is an old one
    sizes = model_config(cfg)
    assert (sizes.image_size, sizes.output_size) == (32, 32)
    saved = load_file(fixtures / "teacher_saved_by_0.1.0_core_layout.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(saved["views"]), saved["maps"], atol=SAVED_OUTPUT_ATOL, rtol=0)
