import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run_torchrun

import pbrforge.shards as shards
from pbrforge.cli import main as cli
from pbrforge.contract import normalize_views, resize_maps
from pbrforge.dataset import PBRDataset
from pbrforge.errors import DataError
from pbrforge.fileio import sha256_file
from pbrforge.models import model_from_checkpoint
from pbrforge.teacher.shards import write_shards

FP16_ATOL = 2e-3


def test_round_trip(tiny_data, tiny_teacher_ckpt, tiny_shards):
    m = shards.load_manifest(tiny_shards)
    ds_all = PBRDataset(tiny_data, "all", 64, 64, curriculum=1)
    assert len(m["entries"]) == len(ds_all)
    assert m["dtype"] == "float16" and m["output_size"] == 32 and m["curriculum"] == 1
    assert m["teacher"]["sha256"] == sha256_file(tiny_teacher_ckpt)
    assert set(m["shards"]) == {e["shard"] for e in m["entries"]}
    model, _, _ = model_from_checkpoint(tiny_teacher_ckpt)
    ds = shards.DistillDataset(
        tiny_data, tiny_shards, image_size=64, output_size=32, curriculum=1, split="all"
    )
    for idx in (0, len(ds) - 1):
        item = ds[idx]
        assert item["teacher"].shape == (8, 32, 32) and item["target"].shape == (8, 32, 32)
        views = ds.base.load_views(item["sample_id"], item["source"])
        with torch.no_grad():
            expected = resize_maps(model(normalize_views(views)[None]), 32)[0]
        torch.testing.assert_close(item["teacher"], expected, atol=FP16_ATOL, rtol=0)
    # rows are found by (sample id, source), not by position
    sid, src = ds.base.entries[3]
    assert ds.index[(sid, src)] == next(
        (e["shard"], e["row"]) for e in m["entries"] if e["sample_id"] == sid and e["source"] == src
    )


def test_resume_after_kill(tiny_data, tiny_teacher_ckpt, tiny_shards, tmp_path, monkeypatch):
    out = tmp_path / "s"
    import safetensors.torch

    real_save, calls = safetensors.torch.save_file, {"n": 0}

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(path).write_bytes(b"half a shard")  # the kill lands mid-write
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tiny_teacher_ckpt, tiny_data, out, 32, 4, 1, progress=False)
    assert not (out / shards.MANIFEST).exists()  # the manifest comes last
    assert len(list(out.glob("shard_*.safetensors"))) == 2 and not list(out.glob(".shard*tmp*"))
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    m = write_shards(tiny_teacher_ckpt, tiny_data, out, 32, 4, 1, progress=False)
    total = len(m["entries"])
    assert m["computed"] == total - 8  # two complete shards of 4 kept
    ref = shards.load_manifest(tiny_shards)
    assert sorted(m["shards"]) == sorted(ref["shards"])
    from safetensors.torch import load_file

    for name in ref["shards"]:  # same values as an uninterrupted run (fp16 rounding may differ by one ulp)
        torch.testing.assert_close(
            load_file(out / name)["maps"].float(),
            load_file(tiny_shards / name)["maps"].float(),
            atol=FP16_ATOL,
            rtol=0,
        )
    assert len({(e["sample_id"], e["source"]) for e in m["entries"]}) == total  # nothing duplicated
    assert write_shards(tiny_teacher_ckpt, tiny_data, out, 32, 4, 1, progress=False)["computed"] == 0


def test_verify_catches_flipped_byte(tiny_shards, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(tiny_shards, out)
    r = CliRunner().invoke(cli, ["shards", "--verify", str(out)])
    assert r.exit_code == 0 and "verified" in r.output
    victim = sorted(out.glob("shard_*.safetensors"))[1]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = CliRunner().invoke(cli, ["shards", "--verify", str(out)])
    assert r.exit_code == 2
    assert victim.name in r.output and "sha256 differs" in r.output


def _mutated_manifest(tiny_shards, tmp_path, fn):
    out = tmp_path / "s"
    shutil.copytree(tiny_shards, out)
    p = out / shards.MANIFEST
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))
    return out


@pytest.mark.parametrize(
    "case, kwargs, message",
    [
        ("size", {"output_size": 64}, "rewrite them with --shard-output-size 64"),
        ("curriculum", {"curriculum": 0}, "render curriculum 1"),
        ("teacher", {"teacher_sha256": "0" * 64}, "another teacher checkpoint"),
    ],
)
def test_mismatch_errors(tiny_data, tiny_shards, case, kwargs, message):
    args = {"image_size": 64, "output_size": 32, "curriculum": 1, "split": "all"} | kwargs
    with pytest.raises(DataError, match=message):
        shards.DistillDataset(tiny_data, tiny_shards, **args)


def test_missing_sample_and_bad_hash(tiny_data, tiny_shards, tmp_path):
    out = _mutated_manifest(tiny_shards, tmp_path, lambda m: m["entries"].pop(0))
    with pytest.raises(DataError, match="lack sample"):
        shards.DistillDataset(tiny_data, out, 64, 32, 1, "all")
    out2 = _mutated_manifest(
        tiny_shards, tmp_path / "b", lambda m: m["shards"]["shard_00000.safetensors"].update(sha256="f" * 64)
    )
    with pytest.raises(DataError, match="damaged: shard_00000"):
        shards.DistillDataset(tiny_data, out2, 64, 32, 1, "all")


def test_refuses_to_mix_teachers(tiny_data, tiny_teacher_ckpt, tiny_shards, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(tiny_shards, out)
    with pytest.raises(DataError, match="another teacher, size"):
        write_shards(tiny_teacher_ckpt, tiny_data, out, 16, 4, 1, progress=False)
    with pytest.raises(DataError, match="never upsample"):
        write_shards(tiny_teacher_ckpt, tiny_data, tmp_path / "t", 128, 4, 1, progress=False)


def test_shard_sampler_reads_each_shard_once(tiny_data, tiny_shards):
    ds = shards.DistillDataset(tiny_data, tiny_shards, 64, 32, 1, "all")
    sampler = shards.ShardSampler(ds, seed=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(ds)))
        runs = [ds.shard_of(order[0])]
        for i in order[1:]:
            if ds.shard_of(i) != runs[-1]:
                runs.append(ds.shard_of(i))
        assert len(runs) == len(set(runs))  # each shard is one contiguous run
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # reshuffled per epoch
    ranks = [list(shards.ShardSampler(ds, 0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(range(len(ds)))


@pytest.mark.slow
def test_torchrun_ranks_split_and_rank0_merges(tiny_data, tiny_teacher_ckpt, tiny_shards, tmp_path):
    out = tmp_path / "ddp"
    r = run_torchrun(
        "teacher_infer.py",
        str(tiny_teacher_ckpt),
        "--data",
        str(tiny_data),
        "--output",
        str(out),
        "--shard-output-size",
        "32",
        "--shard-size",
        "4",
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = shards.load_manifest(out)
    ref = shards.load_manifest(tiny_shards)
    assert m["entries"] == ref["entries"] and sorted(m["shards"]) == sorted(ref["shards"])
    assert not list(out.glob(".progress.*"))  # rank 0 merged and cleaned up
    assert shards.verify_shards(out) == []
