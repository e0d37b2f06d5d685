"""Model specs (issue #26): loaded from a file, a module or a registered name, and every bad one refused in a sentence."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from pbrforge.errors import ConfigError, DataError
from pbrforge.modelspec import GraphSpec, ModelSpec, TensorSpec, load_spec

SPEC_FILE = """
import torch
from pbrforge.modelspec import GraphSpec, ModelSpec, TensorSpec

class Denoise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, sigma):
        return x + sigma.view(-1, 1, 1, 1) * self.conv(x)

def build():
    image = TensorSpec("noisy", (1, 3, 32, 32), color="srgb", encoding=(-1.0, 1.0), valid=(-1.0, 1.0), multiple=8)
    sigma = TensorSpec("sigma", (1,), kind="tensor", valid=(0.002, 80.0))
    out = TensorSpec("denoised", (1, 3, 32, 32), color="srgb", encoding=(-1.0, 1.0), gate="psnr")
    return ModelSpec("edm-toy", {"step": GraphSpec(Denoise(), (image, sigma), (out,))}, {"sampler": "heun"})

def not_a_spec():
    return 42

def broken():
    raise RuntimeError("weights missing")
"""


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "toy_model.py"
    path.write_text(textwrap.dedent(SPEC_FILE))
    return path


def test_a_file_factory_builds_a_spec_whose_examples_run_and_pass_their_own_checks(spec_file):
    spec = load_spec(f"{spec_file}:build")
    graph = spec.graphs["step"]
    inputs = graph.example_inputs()
    graph.check_inputs(inputs)
    assert inputs[0].shape == (1, 3, 32, 32) and -1 <= float(inputs[0].min()) < float(inputs[0].max()) <= 1
    assert 0.002 <= float(inputs[1]) <= 80
    assert graph.module(*inputs).shape == (1, 3, 32, 32)
    assert spec.glue == {"sampler": "heun"} and graph.outputs[0].gate == "psnr"


def test_a_module_factory_loads_too(spec_file, monkeypatch):
    monkeypatch.syspath_prepend(str(spec_file.parent))
    assert load_spec("toy_model:build").name == "edm-toy"


def test_runners_refuse_what_the_exported_graph_no_longer_asserts(spec_file):
    graph = load_spec(f"{spec_file}:build").graphs["step"]
    x, sigma = graph.example_inputs()
    cases = {
        "outside": (x, torch.tensor([100.0])),
        "NaN": (x, torch.tensor([math.nan])),
        "multiples of 8": (torch.zeros(1, 3, 30, 32), sigma),
        "expected 4 axes": (torch.zeros(3, 32, 32), sigma),
        "expected float32": (x.double(), sigma),
        "expected 2 inputs": (x,),
    }
    for needle, values in cases.items():
        with pytest.raises(DataError, match=needle):
            graph.check_inputs(values)
    graph.check_inputs((torch.zeros(1, 3, 64, 48), sigma))  # any multiple of 8 is taken


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("{file}:not_a_spec", "returned int, not a pbrforge ModelSpec"),
        ("{file}:broken", "failed: RuntimeError: weights missing"),
        ("{file}:missing", "has no callable 'missing'"),
        ("{dir}/nowhere.py:build", "does not exist"),
        ("{dir}:build", "cannot import"),
        ("no_such_package_xyz:build", "cannot import"),
        ("unregistered-model", "no model named 'unregistered-model'"),
    ],
)
def test_a_bad_reference_is_one_sentence(spec_file, ref, needle):
    with pytest.raises((ConfigError, DataError), match=needle):
        load_spec(ref.format(file=spec_file, dir=spec_file.parent))


def test_a_file_that_fails_to_import_is_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('needs a package you do not have')\n")
    with pytest.raises(ConfigError, match="failed to load: ImportError"):
        load_spec(f"{bad}:build")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"name": "not a name"}, "not an identifier"),
        ({"shape": (1, 3, 0, 8)}, "positive whole numbers"),
        ({"kind": "video"}, "kind 'video'"),
        ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
        ({"valid": (1.0, math.nan)}, "two finite numbers"),
        ({"valid": (5.0, 1.0)}, "low below high"),
        ({"multiple": 0}, "positive whole number"),
        ({"shape": (1, 3, 30, 32), "multiple": 8}, "multiples of 8"),
        ({"shape": (3, 32, 32)}, r"\(batch, channels, height, width\)"),
    ],
)
def test_a_malformed_tensor_spec_is_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        TensorSpec(**({"name": "x", "shape": (1, 3, 32, 32)} | kwargs))


def test_a_malformed_model_spec_is_refused():
    t = TensorSpec("x", (1, 3, 8, 8))
    with pytest.raises(ConfigError, match="lists no graph"):
        ModelSpec("m", {})
    with pytest.raises(ConfigError, match="not a GraphSpec holding a torch module"):
        ModelSpec("m", {"g": GraphSpec(object(), (t,), (TensorSpec("y", (1, 3, 8, 8)),))})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="repeats a tensor name"):
        ModelSpec("m", {"g": GraphSpec(torch.nn.Identity(), (t,), (t,))})
