from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_student_args
from torch import nn

from pbrforge.cli import main as cli
from pbrforge.contract import validate
from pbrforge.models import model_from_checkpoint
from pbrforge.student.model import STUDENTS, PBRStudent, StudentConfig, create_student, student_config

SMALL = 64
ORDER_ATOL = 1e-4


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_presets_build_and_run_small(name):
    model = create_student(name, image_size=SMALL).eval()
    out = model(torch.randn(1, 3, 3, SMALL, SMALL))
    scale = student_config(name).sr_scale
    assert out.shape == (1, 8, SMALL * scale, SMALL * scale)
    validate(out)


def test_preset_registry():
    assert {
        "student_mnv3_vit_512",
        "student_mnv3_plk_512",
        "student_mnv3_plk_1024",
        "student_mnv3_vit_2048",
    } <= set(STUDENTS)
    assert student_config("student_mnv3_vit_512").output_size == 1024
    assert student_config("student_mnv3_plk_1024").output_size == 1024
    with pytest.raises(KeyError, match="known: student_mnv3_plk_1024"):
        create_student("student_tiny")


def test_decoder_padding():
    """Presets pad the decoder and SR head by replication; a config saved without the field keeps zeros."""
    assert {student_config(n).decoder_padding for n in STUDENTS} == {"replicate"}
    model = create_student("student_mnv3_plk_1024", image_size=SMALL)
    modes = {m.padding_mode for m in [*model.up.modules(), *model.head.modules()] if isinstance(m, nn.Conv2d)}
    assert modes == {"replicate"}
    encoder = {m.padding_mode for m in model.encoder.modules() if isinstance(m, nn.Conv2d)}
    assert encoder == {"zeros"}  # timm's encoder is left as built
    old = asdict(student_config("student_mnv3_plk_1024"))
    del old["decoder_padding"]
    assert StudentConfig(**old).decoder_padding == "zeros"
    with pytest.raises(ValueError, match="unknown decoder_padding 'reflect'; known: zeros, replicate"):
        create_student("student_mnv3_plk_1024", image_size=SMALL, decoder_padding="reflect")


@pytest.mark.parametrize("bottleneck", ["vit", "plk"])
def test_view_order_invariance(bottleneck):
    torch.manual_seed(0)
    model = create_student("student_mnv3_plk_512", bottleneck=bottleneck, image_size=SMALL).eval()
    views = torch.randn(2, 3, 3, SMALL, SMALL)
    ref = model(views)
    for perm in ([2, 0, 1], [1, 0, 2]):
        torch.testing.assert_close(model(views[:, perm]), ref, atol=ORDER_ATOL, rtol=0)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_sr_scale_and_bypass(scale):
    model = create_student("student_mnv3_plk_512", image_size=SMALL, sr_scale=scale).eval()
    x = torch.randn(1, 3, 3, SMALL, SMALL)
    assert model(x).shape[-1] == SMALL * scale
    assert model(x, use_sr=False).shape[-1] == SMALL


def test_plk_kernel_limit_and_sharing():
    with pytest.raises(ValueError, match="13"):
        create_student("student_mnv3_plk_512", image_size=SMALL, plk_kernel=15)
    model = create_student("student_mnv3_plk_512", image_size=SMALL)
    kernels = {id(b.kernel) for b in model.fusion.blocks}
    assert len(kernels) == 1  # one large kernel shared by all blocks


def test_vit_is_four_dimensional():
    """The ANE-style ViT never builds a 5-D tensor inside its blocks."""
    model = create_student("student_mnv3_vit_512", image_size=SMALL).eval()
    ranks = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: ranks.append(o.ndim)) for m in model.fusion.blocks.modules()
    ]
    model(torch.randn(1, 3, 3, SMALL, SMALL))
    for h in hooks:
        h.remove()
    assert ranks and set(ranks) == {4}


def _train(tiny_data, tiny_shards, tmp_path, *extra):
    return CliRunner().invoke(cli, [*tiny_student_args(tiny_data, tiny_shards, tmp_path / "run"), *extra])


@pytest.mark.slow
def test_distill_train_and_checkpoint_round_trip(tiny_data, tiny_shards, tmp_path):
    r = _train(tiny_data, tiny_shards, tmp_path)
    assert r.exit_code == 0, r.output
    model, cfg, ckpt = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", family="student")
    assert isinstance(model, PBRStudent) and cfg.loss.distill_alpha == pytest.approx(0.7)
    assert ckpt["distilled_from"]["sha256"]
    again, _, _ = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    x = torch.randn(1, 3, 3, 32, 32)
    torch.testing.assert_close(model(x), again(x))
    r = _train(
        tiny_data,
        tiny_shards,
        tmp_path,
        "--resume",
        str(tmp_path / "run" / "checkpoints" / "latest.pt"),
        "--epochs",
        "2",
    )
    assert r.exit_code == 0, r.output


def test_shard_size_mismatch_is_one_sentence(tiny_data, tiny_shards, tmp_path):
    r = _train(tiny_data, tiny_shards, tmp_path, "--image-size", "64", "--set", "model.sr_scale=2")
    assert r.exit_code == 2
    assert "rewrite them with --shard-output-size 128" in r.output


def test_teacher_config_refused(tiny_data, tiny_shards, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "student-train",
            "--config",
            "quick_test",
            "--shards",
            str(tiny_shards),
            "--data",
            str(tiny_data),
            "--output",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 2 and "teacher config" in r.output
