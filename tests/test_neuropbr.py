"""NeuroPBR's own student checkpoints and pbrforge's students through ``--model`` (issue #26, build items 1, 3, 8).

The NeuroPBR checkpoint here is written the way its ``student/train.py`` writes one: ``torch.save`` of a dict
holding ``student_state_dict`` and its ``TrainConfig`` dataclass, pickled from a module named ``train_config``.
The module is gone by the time the file is read, as it is on a user's machine with no NeuroPBR checkout.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pbrforge.cli import main as cli
from pbrforge.errors import ConfigError, DataError
from pbrforge.export.neuropbr import NeuroPBRConfig, NeuroPBRStudent, load_student, read_checkpoint

KEYS = Path(__file__).parent / "data" / "neuropbr_student_512_keys.json"


def _train_config_module() -> types.ModuleType:
    """Stand-ins for NeuroPBR's config dataclasses, under the module name its checkpoints record."""
    module = types.ModuleType("train_config")

    @dataclass
    class ModelConfig:
        encoder_type: str = "mobilenetv3"
        encoder_backbone: str = "mobilenet_v3_large"
        encoder_in_channels: int = 3
        encoder_stride: int = 2
        use_transformer: bool = True
        transformer_dim: int = 64
        transformer_num_heads: int = 4
        transformer_depth: int = 1
        transformer_mlp_ratio: int = 2
        decoder_sr_scale: int = 2
        output_channels: list = field(default_factory=lambda: [3, 1, 1, 3])

    @dataclass
    class DataConfig:
        image_size: tuple = (64, 64)
        output_size: tuple = (128, 128)

    @dataclass
    class TransformConfig:
        mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
        std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])

    @dataclass
    class TrainConfig:
        data: DataConfig = field(default_factory=DataConfig)
        model: ModelConfig = field(default_factory=ModelConfig)
        transform: TransformConfig = field(default_factory=TransformConfig)

    for cls in (ModelConfig, DataConfig, TransformConfig, TrainConfig):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def _save(path: Path, payload_of) -> Path:
    """``torch.save`` what ``payload_of(train_config)`` builds, with the config module present only while saving."""
    module = _train_config_module()
    sys.modules[module.__name__] = module
    try:
        torch.save(payload_of(module), path)
    finally:
        del sys.modules[module.__name__]
    return path


SMALL = NeuroPBRConfig(dim=64, heads=4, depth=1, image_size=64)


@pytest.fixture(scope="module")
def neuropbr_ckpt(tmp_path_factory) -> tuple[Path, NeuroPBRStudent]:
    torch.manual_seed(3)
    model = NeuroPBRStudent(SMALL).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so eval mode is not an identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("neuropbr") / "best_student.pth"

    def payload(tc):
        opt = torch.optim.AdamW(model.parameters())
        return {
            "epoch": 4,
            "global_step": 40,
            "student_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "config": tc.TrainConfig(),
            "val_loss": 0.31,
            "best_val_loss": 0.29,
        }

    return _save(path, payload), model


def test_the_rebuilt_student_has_neuropbrs_state_dict_key_for_key():
    """Keys and shapes recorded from NeuroPBR's own StudentGenerator (configs/mobilenetv3_512.py)."""
    recorded = json.loads(KEYS.read_text())["keys"]
    ours = {k: list(v.shape) for k, v in NeuroPBRStudent(NeuroPBRConfig()).state_dict().items()}
    assert len(recorded) == 438
    assert ours == recorded


def test_a_neuropbr_checkpoint_loads_without_its_code_and_computes_the_same_maps(neuropbr_ckpt):
    path, original = neuropbr_ckpt
    assert "train_config" not in sys.modules
    state, cfg = read_checkpoint(path)
    assert cfg == SMALL
    loaded = load_student(path)
    views = torch.rand(1, 3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want, got = original(views), loaded(views)
    assert set(got) == {"albedo", "roughness", "metallic", "normal"}
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert got["albedo"].shape == (1, 3, 64, 64)  # output side = input side: its "SR 2x" ends where it began
    assert torch.allclose(got["normal"].norm(dim=1), torch.ones(1, 64, 64), atol=1e-5)


def test_neuropbr_exports_through_the_model_path_and_passes_the_render_gate(neuropbr_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    path, _ = neuropbr_ckpt
    out = tmp_path / "np"
    r = CliRunner().invoke(
        cli,
        ["export", "--model", "neuropbr", "--weights", str(path), "--output", str(out), "--format", "onnx"],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "np.model.json").read_text())
    graph = manifest["graphs"]["student"]
    assert [t["name"] for t in graph["inputs"]] == ["view_0", "view_1", "view_2"]
    assert [t["name"] for t in graph["outputs"]] == ["albedo", "roughness", "metallic", "normal"]
    (artifact,) = graph["artifacts"]
    assert artifact["status"] == "ok" and (tmp_path / artifact["path"]).is_file()
    (material,) = manifest["pipelines"]
    assert material["pipeline"] == "material" and material["verdict"]["metric"] == "render"
    assert material["verdict"]["passed"] and material["verdict"]["figure"] > 100
    assert "normal p99" in material["verdict"]["detail"]


def test_the_render_metric_fails_turned_normals_that_a_psnr_on_numbers_would_pass():
    from pbrforge.export import pbr_spec  # noqa: F401  (registers the metric)
    from pbrforge.gate_metrics import judge

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(1, 8, 32, 32, generator=g)
    maps[:, 5:8] = torch.nn.functional.normalize(torch.randn(1, 3, 32, 32, generator=g).abs() + 0.5, dim=1)
    turned = maps.clone()
    turned[:, 5:8] = torch.nn.functional.normalize(
        maps[:, 5:8] + torch.tensor([0.08, 0, 0]).view(1, 3, 1, 1), dim=1
    )
    same = judge("render", maps.numpy(), maps.numpy(), 2.0)
    moved = judge("render", maps.numpy(), turned.numpy(), 2.0)
    assert same.passed
    assert not moved.passed and "normal p99" in moved.detail
    assert judge("psnr:30", maps.numpy(), turned.numpy(), 2.0).passed  # the numbers alone look fine


def test_a_pbrforge_student_is_one_spec_among_others(tiny_student_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    from pbrforge.export.model_export import export_model
    from pbrforge.modelspec import load_spec

    spec = load_spec("pbr", tiny_student_ckpt)
    result = export_model(spec, tmp_path / "student", ("onnx",))
    assert result.failures == []
    (material,) = result.pipelines
    assert material["verdict"]["metric"] == "render" and material["verdict"]["passed"]
    (artifact,) = result.artifacts
    assert set(artifact.verdicts) == {"albedo", "roughness", "metallic", "normal"}
    # run on three photos: the maps come out as the contract's files (normal stored as (n + 1) / 2)
    from PIL import Image

    from pbrforge.contract import decode_map

    views = tmp_path / "views"
    views.mkdir()
    side = spec.graphs["student"].inputs[0].shape[-1]
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(views / f"view_{i}.png")
    manifest = tmp_path / "student.model.json"
    r = CliRunner().invoke(
        cli, ["run", str(manifest), "--input", str(views), "--output", str(tmp_path / "maps")]
    )
    assert r.exit_code == 0, r.output
    for name in ("albedo", "roughness", "metallic", "normal"):
        assert (tmp_path / "maps" / f"{name}.png").is_file()
    normal = decode_map("normal", tmp_path / "maps" / "normal.png")
    assert np.allclose(np.linalg.norm(normal, axis=0), 1.0, atol=1e-3)


def _config(**sections):
    """A payload whose TrainConfig has one section built with the given fields (name -> (class, fields))."""

    def payload(tc):
        built = {name: getattr(tc, cls)(**fields) for name, (cls, fields) in sections.items()}
        return {"student_state_dict": {}, "config": tc.TrainConfig(**built)}

    return payload


def _foreign(tc):
    return {"student_state_dict": {}, "config": tc.TrainConfig(), "hook": np.float64(1.0)}


@pytest.mark.parametrize(
    ("payload", "error", "says"),
    [
        (lambda tc: {"generator_state_dict": {}}, DataError, "is a NeuroPBR teacher checkpoint"),
        (lambda tc: {"epoch": 3}, DataError, "has no 'student_state_dict'"),
        (lambda tc: {"student_state_dict": {}}, DataError, "holds no NeuroPBR TrainConfig"),
        (_foreign, DataError, "holds objects other than tensors and NeuroPBR's config (numpy"),
        (
            lambda tc: {
                "student_state_dict": {},
                "config": tc.TrainConfig(model=tc.ModelConfig(encoder_type="resnet")),
            },
            ConfigError,
            "with a 'resnet' encoder",
        ),
        (
            lambda tc: {"student_state_dict": {"x": torch.zeros(1)}, "config": tc.TrainConfig()},
            ConfigError,
            "holds weights of another architecture",
        ),
        (
            lambda tc: {
                "student_state_dict": {"x": torch.tensor([float("nan")])},
                "config": tc.TrainConfig(),
            },
            DataError,
            "NaN or inf weights",
        ),
        (_config(data=("DataConfig", {"image_size": (4096, 4096)})), ConfigError, "between 32 and 2048"),
        (
            _config(data=("DataConfig", {"image_size": (64, 128)})),
            ConfigError,
            "not one whole number of pixels",
        ),
        (
            _config(model=("ModelConfig", {"transformer_num_heads": 0})),
            ConfigError,
            "must be a positive multiple of transformer_num_heads 0",
        ),
        (
            _config(transform=("TransformConfig", {"std": [float("nan")] * 3})),
            ConfigError,
            "must be three finite numbers each",
        ),
        (
            _config(transform=("TransformConfig", {"mean": [0.5] * 4})),
            ConfigError,
            "must be three finite numbers each",
        ),
    ],
)
def test_a_file_that_is_not_a_usable_neuropbr_student_is_refused_in_one_sentence(
    tmp_path, payload, error, says
):
    path = _save(tmp_path / "x.pth", payload)
    with pytest.raises(error, match=None) as e:
        load_student(path)
    assert says in str(e.value)


def test_weights_of_the_wrong_shape_or_type_and_files_torch_did_not_write_are_one_sentence(
    neuropbr_ckpt, tmp_path
):
    _, model = neuropbr_ckpt
    state = model.state_dict()
    key = "decoder.heads.0.weight"

    def payload_with(tensor):
        return lambda tc: {"student_state_dict": state | {key: tensor}, "config": tc.TrainConfig()}

    for tensor, says in (
        (torch.zeros(5, 64, 1, 1), f"{key} is (5, 64, 1, 1), not (3, 64, 1, 1)"),
        (state[key].to(torch.int32), f"{key} holds torch.int32 values where weights are floats"),
    ):
        with pytest.raises(ConfigError) as e:
            load_student(_save(tmp_path / "w.pth", payload_with(tensor)))
        assert says in str(e.value) and "\n" not in str(e.value)
    for name, content in (("empty.pth", b""), ("notes.pth", b"trained for 40 epochs")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="is not a file torch.save wrote"):
            load_student(tmp_path / name)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "neuropbr"], "--model neuropbr needs --weights"),
        (["--model", "neuropbr", "--weights", "missing.pth"], "does not exist or is not a file"),
        (["best.pt", "--weights", "w.safetensors"], "--weights goes with --model"),
        (
            [
                "--model",
                f"{Path(__file__).resolve().parents[1] / 'examples' / 'edm_denoiser' / 'model.py'}:spec",
                "--weights",
                __file__,
            ],
            "takes no weights argument",
        ),
    ],
)
def test_bad_weights_requests_are_one_sentence_and_exit_2(tmp_path, args, says):
    r = CliRunner().invoke(cli, ["export", *args, "--output", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_config_saved_before_the_transform_section_normalises_as_neuropbrs_inference_does(tmp_path):
    def payload(tc):
        config = tc.TrainConfig()
        del config.transform  # older NeuroPBR configs have no transform section
        return {"student_state_dict": {}, "config": config}

    _, cfg = read_checkpoint(_save(tmp_path / "old.pth", payload))
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)  # its ImageNet fallback
