"""Hardening of checkpoint reading (issue 14, item 10): sidecar fields of the wrong type,
absurd model sizes, tensor names, dtypes and shapes checked against the model before
anything is allocated, the hash required, garbage random-generator state.

Each tampered checkpoint is built in tmp_path from a real one (the hash kept valid where
the test means another check); each must give one CheckpointError line through
read_checkpoint / load_checkpoint, and exit 2 with one line through --resume."""
from __future__ import annotations

import json
import resource

import pytest
import torch

from _hostile import (make_base_run, BASE_ARGS, ckpt, copy_run, edit_sidecar, first_weight, one_line_error,
                      rewrite_tensors, run_main)
from margin_theory._util import CheckpointError
from margin_theory.checkpoint import load_checkpoint, read_checkpoint
from margin_theory.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_base_run(tmp_path_factory)


def _set(path, value):
    """A sidecar edit: set the dotted ``path`` (list indices as digits) to ``value``."""
    def fn(meta):
        keys = path.split(".")
        d = meta
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if value is _DELETE:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return fn


_DELETE = object()

SIDECAR_CASES = {
    "epoch-null": (_set("epoch", None), "epoch must be an integer"),
    "epoch-list": (_set("epoch", [3]), "epoch must be an integer"),
    "epoch-string": (_set("epoch", "3"), "epoch must be an integer"),
    "epoch-float": (_set("epoch", 2.5), "epoch must be an integer"),
    "epoch-bool": (_set("epoch", True), "epoch must be an integer"),
    "epoch-negative": (_set("epoch", -1), "epoch must be an integer"),
    "step-string": (_set("step", "many"), "step must be an integer"),
    "config-list": (_set("config", [1, 2]), "config must be a JSON object"),
    "config-string": (_set("config", "sgd"), "config must be a JSON object"),
    "lr-string": (_set("optimizer.param_groups.0.lr", "0.05"), "lr must be a finite number"),
    "momentum-string": (_set("optimizer.param_groups.0.momentum", "0.9"), "momentum must be a finite number"),
    "maximize-string": (_set("optimizer.param_groups.0.maximize", "yes"), "maximize must be true, false"),
    "params-strings": (_set("optimizer.param_groups.0.params", ["a"]), "params must be a list"),
    "param-groups-string": (_set("optimizer.param_groups", "all"), "param_groups must be a non-empty list"),
    "optimizer-state-list": (_set("optimizer.state", [1]), "optimizer.state must map"),
    "optimizer-list": (_set("optimizer", [1]), "optimizer must be null or an object"),
    "rng-string": (_set("rng", "generator_cpu"), "rng must be a list"),
    "rng-bad-name": (_set("rng", ["../../x"]), "rng must be a list"),
    "metrics-list": (_set("metrics", [1]), "metrics must be a JSON object"),
    "model-args-list": (_set("model_args", [1]), "invalid model_args"),
    "rank-string": (_set("model_args.rank", "2"), "model_args.rank must be an integer"),
    "rank-zero": (_set("model_args.rank", 0), "model_args.rank must be an integer"),
    "layers-huge": (_set("model_args.layers", 10**6), "model_args.layers must be an integer"),
    "input-shape-zero": (_set("model_args.input_shape", [0]), "model_args.input_shape"),
    "input-shape-string": (_set("model_args.input_shape", "4"), "model_args.input_shape"),
    "num-classes-float": (_set("model_args.num_classes", 3.0), "model_args.num_classes"),
    "hidden-strings": (_set("model_args.hidden", ["8"]), "model_args.hidden"),
    "conv-bias-string": (_set("model_args.conv_bias", "no"), "model_args.conv_bias"),
    "hash-missing": (_set("tensor_sha256", _DELETE), "lacks the field 'tensor_sha256'"),
    "hash-null": (_set("tensor_sha256", None), "tensor_sha256 must be 64"),
    "hash-short": (_set("tensor_sha256", "abc"), "tensor_sha256 must be 64"),
    "bytes-missing": (_set("tensor_bytes", _DELETE), "lacks the field 'tensor_bytes'"),
    "bytes-null": (_set("tensor_bytes", None), "tensor_bytes must be an integer"),
    "bytes-string": (_set("tensor_bytes", "1000"), "tensor_bytes must be an integer"),
}


@pytest.mark.parametrize("case", sorted(SIDECAR_CASES))
def test_sidecar_field_of_the_wrong_type_is_one_line_error(base_run, tmp_path, case):
    out = copy_run(base_run, tmp_path / "run")
    fn, needle = SIDECAR_CASES[case]
    edit_sidecar(ckpt(out, 3), fn)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt(out, 3))
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and len(msg) < 400, msg


@pytest.mark.parametrize("raw", ["1e400", "-1e400"])
def test_sidecar_epoch_that_overflows_to_infinity(base_run, tmp_path, raw):
    out = copy_run(base_run, tmp_path / "run")
    side = ckpt(out, 3).with_suffix(".json")
    text = side.read_text()
    side.write_text(text.replace('"epoch": 3', f'"epoch": {raw}', 1))
    with pytest.raises(CheckpointError, match="epoch must be an integer"):
        read_checkpoint(ckpt(out, 3))


@pytest.mark.parametrize("case", ["epoch-null", "config-list", "lr-string", "hash-missing", "rank-string"])
def test_sidecar_of_the_wrong_type_through_resume_exits_2(base_run, tmp_path, capsys, case):
    out = copy_run(base_run, tmp_path / "run")
    fn, needle = SIDECAR_CASES[case]
    edit_sidecar(ckpt(out, 3), fn)
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--resume", "--epochs", "4"], capsys)
    one_line_error(rc, err, needle)


DEEP_JSON = "[" * 100_000 + "]" * 100_000      # valid JSON that overflows the parser's recursion


def test_deeply_nested_sidecar_and_config_are_one_line_errors(base_run, tmp_path, capsys):
    out = copy_run(base_run, tmp_path / "run")
    ckpt(out, 3).with_suffix(".json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_checkpoint(ckpt(out, 3))
    (out / "config.json").write_text(DEEP_JSON)       # --resume falls back to the (bad) sidecar: exit 2
    rc, _, err = run_main(train_main, ["--out", out, "--resume", "--epochs", "4"], capsys)
    one_line_error(rc, err, "nested too deeply")


@pytest.mark.parametrize("field, value", [("rank", 10**12), ("hidden", [10**12]), ("input_shape", [2**24, 2**24])])
def test_absurd_model_size_is_refused_before_allocating(base_run, tmp_path, field, value):
    """rank 1e12 would ask the allocator for terabytes: the model is built on the meta device and
    its size compared with the tensor file first. The address space is capped at 2 GiB above its current size so that
    an attempt to allocate fails the test instead of the machine."""
    out = copy_run(base_run, tmp_path / "run")
    edit_sidecar(ckpt(out, 3), _set(f"model_args.{field}", value))
    if field == "hidden":
        edit_sidecar(ckpt(out, 3), _set("model_args.layers", 2))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), hard))   # 2 GiB more than now
    try:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ckpt(out, 3))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert "bytes of weights" in str(info.value) or "shape" in str(info.value), info.value


def _rename(old, new):
    def fn(t):
        k = first_weight(t) if old == "<weight>" else old
        t[new] = t.pop(k)
    return fn


TENSOR_CASES = {
    "optim-index-not-a-number": (_rename("optim.state.0.momentum_buffer", "optim.state.x.momentum_buffer"),
                                 "invalid optimizer tensor name"),
    "optim-no-key": (_rename("optim.state.0.momentum_buffer", "optim.state.0"), "invalid optimizer tensor name"),
    "optim-index-out-of-range": (_rename("optim.state.0.momentum_buffer", "optim.state.99.momentum_buffer"),
                                 "invalid optimizer tensor name"),
    "unknown-prefix": (_rename("<weight>", "bogus.weight"), "missing"),
    "extra-model-tensor": (lambda t: t.update({"model.extra": torch.zeros(2)}), "unexpected extra"),
    "extra-unknown-tensor": (lambda t: t.update({"payload": torch.zeros(2)}), "unexpected tensor name"),
    "weight-float64": (lambda t: t.update({first_weight(t): t[first_weight(t)].double()}), "is F64"),
    "weight-int8": (lambda t: t.update({first_weight(t): t[first_weight(t)].to(torch.int8)}), "is I8"),
    "weight-bool": (lambda t: t.update({first_weight(t): t[first_weight(t)] > 0}), "is BOOL"),
    "weight-shape": (lambda t: t.update({first_weight(t): t[first_weight(t)].reshape(-1)}), "has shape"),
    "momentum-float64": (lambda t: t.update({"optim.state.0.momentum_buffer":
                                             t["optim.state.0.momentum_buffer"].double()}), "is F64"),
    "momentum-shape": (lambda t: t.update({"optim.state.0.momentum_buffer": torch.zeros(7)}), "has shape"),
    "rng-float": (lambda t: t.update({"rng.torch_cpu": t["rng.torch_cpu"].float()}), "must be 1-D uint8"),
    "rng-missing": (lambda t: [t.pop("rng.torch_cpu")] and None, "lacks"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensor_names_dtypes_and_shapes_are_checked_not_cast(base_run, tmp_path, capsys, case):
    out = copy_run(base_run, tmp_path / "run")
    fn, needle = TENSOR_CASES[case]
    rewrite_tensors(ckpt(out, 3), fn)
    api = read_checkpoint if not case.startswith(("optim", "momentum", "rng")) else None
    if api is not None:
        with pytest.raises(CheckpointError, match=needle):
            api(ckpt(out, 3))
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--resume", "--epochs", "4"], capsys)
    one_line_error(rc, err, needle)


@pytest.mark.parametrize("garbage", [torch.zeros(10, dtype=torch.uint8), torch.full((5056,), 255, dtype=torch.uint8)],
                         ids=["too-short", "all-ones"])
@pytest.mark.parametrize("name", ["rng.generator_cpu", "rng.torch_cpu"])
def test_garbage_rng_state_is_one_line_error(base_run, tmp_path, capsys, garbage, name):
    out = copy_run(base_run, tmp_path / "run")
    if garbage.numel() == 5056 and torch.Generator().get_state().numel() != 5056:
        pytest.skip("this torch's generator state has another size")
    rewrite_tensors(ckpt(out, 3), lambda t: t.update({name: garbage.clone()}))
    rc, _, err = run_main(train_main, [*BASE_ARGS, "--out", out, "--resume", "--epochs", "4"], capsys)
    one_line_error(rc, err, "random-generator state")


def test_hash_fields_removed_with_tensors_scaled_by_1000_are_refused(base_run, tmp_path):
    """The sweep's case: weights multiplied by 1000 and the hash fields deleted."""
    out = copy_run(base_run, tmp_path / "run")
    rewrite_tensors(ckpt(out, 3), lambda t: {k: v * 1000 if v.is_floating_point() and k.startswith("model.") else v
                                             for k, v in t.items()})
    edit_sidecar(ckpt(out, 3), lambda m: [m.pop("tensor_sha256"), m.pop("tensor_bytes")] and None)
    with pytest.raises(CheckpointError, match="lacks the field"):
        load_checkpoint(ckpt(out, 3))


def test_untampered_checkpoint_still_loads(base_run, tmp_path):
    """The strict reader accepts what the trainer writes (all epochs, model and resume)."""
    out = copy_run(base_run, tmp_path / "run")
    for e in range(4):
        ck = read_checkpoint(ckpt(out, e))
        assert ck.epoch == e and json.loads(ckpt(out, e).with_suffix(".json").read_text())["epoch"] == e
