"""Tests of margin_theory.checkpoint: safetensors + JSON sidecar round trips, and a
one-line CheckpointError for every kind of bad checkpoint. No pickle anywhere."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import margin_theory
from margin_theory._util import CheckpointError
from margin_theory.checkpoint import (
    FORMAT,
    checkpoint_files,
    checkpoint_stem,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    read_sidecar,
    restore_checkpoint,
    save_checkpoint,
)
from margin_theory.models import build_model

SRC = Path(margin_theory.__file__).resolve().parent / "checkpoint.py"


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(name="lowrank", shape=(1, 8, 8), C=10, momentum=0.9, steps=3, **kw):
    torch.manual_seed(0)
    model = build_model(name, shape, C, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=1e-4)
    x = torch.rand(16, *shape)
    y = torch.arange(16) % C
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _config(name="lowrank", **kw):
    return {"dataset": "digits", "model": name, "rank": kw.get("rank", 1), "layers": 1, "hidden": None,
            "conv_channels": 1, "conv_bias": True, "lr": 0.05, "momentum": 0.9}


def _save(tmp_path, epoch=3, name="lowrank", shape=(1, 8, 8), **kw):
    model, opt = _trained(name, shape, **kw)
    g = torch.Generator().manual_seed(7)
    torch.randperm(10, generator=g)
    rng = {"generator_cpu": g.get_state(), "torch_cpu": torch.get_rng_state()}
    path = save_checkpoint(checkpoint_stem(tmp_path, epoch), model, opt, _config(name, **kw), epoch,
                           epoch * 14, rng, {"epoch": epoch, "gamma_bar": 0.25})
    return path, model, opt, rng


def test_round_trip_model_optimizer_rng(tmp_path):
    path, model, opt, rng = _save(tmp_path, rank=2)
    assert path == tmp_path / "checkpoints" / "epoch-0003.safetensors"
    assert path.with_suffix(".json").is_file()
    ck = read_checkpoint(path)
    assert ck.epoch == 3 and ck.step == 42 and ck.path == path
    assert ck.config["model"] == "lowrank" and ck.metrics == {"epoch": 3, "gamma_bar": 0.25}
    assert ck.meta["format"] == FORMAT and ck.meta["model_args"]["rank"] == 2
    assert not ck.model.training  # eval mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k]), k
    # momentum buffers and param groups round trip
    want = opt.state_dict()
    assert ck.optimizer_state["param_groups"] == json.loads(json.dumps(want["param_groups"]))
    for i, st in want["state"].items():
        assert torch.equal(st["momentum_buffer"], ck.optimizer_state["state"][i]["momentum_buffer"])
    # a fresh optimizer accepts the state and then steps identically
    model2, opt2 = _trained("lowrank", (1, 8, 8), rank=2, steps=0)
    restore_checkpoint(path, model2, opt2)
    assert len(opt2.state_dict()["state"]) == len(want["state"]) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    for name, st in rng.items():
        assert torch.equal(ck.rng_state[name], st)
    g = torch.Generator()
    g.set_state(ck.rng_state["generator_cpu"])
    g0 = torch.Generator()
    g0.set_state(rng["generator_cpu"])
    assert torch.equal(torch.randperm(50, generator=g), torch.randperm(50, generator=g0))


def test_load_by_json_safetensors_run_dir_and_package_function(tmp_path):
    p3, *_ = _save(tmp_path, epoch=3)
    p10, model10, *_ = _save(tmp_path, epoch=10)
    p2, *_ = _save(tmp_path, epoch=2)
    assert list_checkpoints(tmp_path) == [p2, p3, p10]  # numeric order
    assert list_checkpoints(tmp_path / "checkpoints") == [p2, p3, p10]
    assert latest_checkpoint(tmp_path) == p10
    for where in (p10, p10.with_suffix(".json"), tmp_path, tmp_path / "checkpoints"):
        m, config = load_checkpoint(where)
        assert config["model"] == "lowrank"
        assert torch.equal(m.head.weight, model10.head.weight)
    m, config = margin_theory.load_checkpoint(tmp_path)
    assert torch.equal(m.head.weight, model10.head.weight)
    # an incomplete pair (no sidecar yet) does not count as a checkpoint
    (tmp_path / "checkpoints" / "epoch-0011.safetensors").write_bytes(p10.read_bytes())
    assert latest_checkpoint(tmp_path) == p10
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_batchnorm_buffers_and_quadratic_round_trip(tmp_path):
    path, model, _, _ = _save(tmp_path, name="resnet10-lowrank", shape=(3, 8, 8), steps=1)
    ck = read_checkpoint(path)
    sd = ck.model.state_dict()
    assert any(k.endswith("running_mean") for k in sd) and any(k.endswith("num_batches_tracked") for k in sd)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    qpath, qmodel, _, _ = _save(tmp_path / "q", name="quadratic", shape=(5,), momentum=0.0)
    q = read_checkpoint(qpath)
    assert q.optimizer_state["state"] == {}  # SGD without momentum keeps no tensors
    assert torch.equal(q.model.head.weight, qmodel.head.weight)
    W = q.model.head.W if hasattr(q.model.head, "W") else q.model.head.weight
    assert torch.equal(W, W.transpose(-1, -2))


def test_no_pickle_in_format_or_source(tmp_path):
    src = SRC.read_text()
    assert not re.search(r"\bimport pickle\b|\bpickle\.|torch\.load\b|torch\.save\b", src)
    path, *_ = _save(tmp_path)
    raw = path.read_bytes()
    assert raw[:2] != b"PK" and raw[:1] != b"\x80"  # neither torch's zip nor a pickle
    n = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length + JSON header
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == FORMAT
    assert all(k.startswith(("model.", "optim.", "rng.")) for k in header if k != "__metadata__")
    json.loads(path.with_suffix(".json").read_text())  # the sidecar is plain JSON


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in _one_line(e.value)
    path, *_ = _save(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=r"epoch-0003\.json"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent")


def test_truncated_or_corrupt_tensors(tmp_path):
    path, *_ = _save(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)
    # the size and hash are required (issue 14): without them nothing is loaded
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["tensor_bytes"], meta["tensor_sha256"]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks the field 'tensor_bytes'") as e:
        read_checkpoint(path)
    _one_line(e.value)
    # a file that matches its (rewritten) size and hash but is not safetensors: reworded
    import hashlib

    junk = b"\xff" * 4096
    path.write_bytes(junk)
    meta.update(tensor_bytes=len(junk), tensor_sha256=hashlib.sha256(junk).hexdigest())
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        read_checkpoint(path)
    _one_line(e.value)
    # same size, flipped bytes: the hash catches it
    path2, *_ = _save(tmp_path / "b")
    raw = bytearray(path2.read_bytes())
    raw[-5] ^= 0xFF
    path2.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path2)


def test_foreign_or_invalid_json(tmp_path):
    path, *_ = _save(tmp_path)
    side = path.with_suffix(".json")
    side.write_text(json.dumps({"format": "someone-else", "weights": [1, 2]}))
    with pytest.raises(CheckpointError, match="not a margin_theory checkpoint"):
        read_checkpoint(path)
    side.write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="not a margin_theory checkpoint"):
        read_sidecar(path)
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as e:
        read_checkpoint(path)
    _one_line(e.value)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(other)


def test_unknown_model_and_shape_mismatch(tmp_path):
    path, *_ = _save(tmp_path, rank=2)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    bad = {**meta, "model_args": {**meta["model_args"], "name": "cubic"}}
    side.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="cubic"):
        read_checkpoint(path)
    # sidecar claims rank 3 but the tensors are rank 2
    bad = {**meta, "model_args": {**meta["model_args"], "rank": 3}}
    side.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"shape \(10, 2, 64\).*\(10, 3, 64\)"):
        read_checkpoint(path)
    side.write_text(json.dumps(meta))
    # loading into another model: "checkpoint is for model X (...), not Y (...)"
    quad = build_model("quadratic", (1, 8, 8), 10)
    with pytest.raises(CheckpointError, match=r"is for model lowrank \(rank 2.*\), not quadratic") as e:
        restore_checkpoint(path, quad)
    _one_line(e.value)
    rank1 = build_model("lowrank", (1, 8, 8), 10, rank=1)
    with pytest.raises(CheckpointError, match="is for model lowrank .*not lowrank"):
        restore_checkpoint(path, rank1)
    # optimizer of another shape
    model, _ = _trained("lowrank", (1, 8, 8), rank=2, steps=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))] * 1 + list(model.parameters()), lr=0.1)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore_checkpoint(path, model, opt)


def test_checkpoint_files_naming(tmp_path):
    t, j = checkpoint_files(tmp_path / "epoch-0001")
    assert (t.name, j.name) == ("epoch-0001.safetensors", "epoch-0001.json")
    assert checkpoint_files(tmp_path / "epoch-0001.json") == (t, j)
