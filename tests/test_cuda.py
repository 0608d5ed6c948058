"""The GPU path of the trainer (``--device cuda``), SPEC §9. Marked ``cuda``: skipped without
a CUDA device; ``scripts/gpu_check.sh`` runs them (``pytest -m cuda``) on a GPU machine."""
from __future__ import annotations

import math

import pytest
import torch

from margin_theory.checkpoint import read_checkpoint
from margin_theory.margins import compute_margins
from margin_theory.train import TrainConfig, augment_batch, epoch_batches, read_metrics, select_device, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

RUN = dict(dataset="mnist-5k", model="lowrank", rank=4, lr=0.05, momentum=0.9, augment=True, n_train=2000,
           n_test=500, epochs=4, device="cuda", quiet=True)


def test_select_device_and_device_resident_data():
    dev = select_device("cuda")
    assert dev.type == "cuda" and dev.index is not None
    res = train(TrainConfig(**{**RUN, "epochs": 1}), log=None)
    assert res.dataset.X_train.device.type == "cuda" and res.dataset.y_train.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in res.model.parameters())
    assert res.final["device"].startswith("cuda")


def test_batches_and_augmentation_on_the_device():
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = epoch_batches(1000, 64, g)
    assert all(b.device.type == "cuda" for b in batches)
    assert torch.equal(torch.cat(batches).sort().values.cpu(), torch.arange(1000))
    x = torch.rand(16, 3, 8, 8, device="cuda")
    out = augment_batch(x, g, pad=2, flip=False)
    assert out.device.type == "cuda"
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(16):      # every output is one of the 25 zero-padded crops of its input
        assert any(torch.equal(out[b], xp[b, :, i:i + 8, j:j + 8]) for i in range(5) for j in range(5)), b


def test_checkpoints_hold_the_cuda_rng_states(tmp_path):
    train(TrainConfig(**{**RUN, "epochs": 1}, out=str(tmp_path / "r")), log=None)
    ck = read_checkpoint(tmp_path / "r")
    assert {"generator_cuda", "torch_cpu", "torch_cuda"} <= set(ck.rng_state)


def test_resume_equals_uninterrupted_on_the_same_gpu(tmp_path):
    straight = train(TrainConfig(**RUN, out=str(tmp_path / "a")), log=None)
    train(TrainConfig(**{**RUN, "epochs": 2}, out=str(tmp_path / "b")), log=None)
    resumed = train(TrainConfig(**RUN, out=str(tmp_path / "b"), resume=True), log=None)
    assert resumed.final["resumed_from_epoch"] == 2
    for ra, rb in zip(read_metrics(tmp_path / "b"), straight.history):
        for k in ("train_loss", "gamma_bar", "gamma_min", "theta_norm", "train_acc", "test_acc"):
            assert math.isclose(ra[k], rb[k], rel_tol=1e-6, abs_tol=1e-9), (ra["epoch"], k, ra[k], rb[k])
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], rtol=0, atol=1e-6), k


def test_gpu_margins_match_a_float64_cpu_evaluation(tmp_path):
    """The trainer's margins on the GPU are evaluated without TF32 (float32 logits, float64
    margins): they agree with a float64 CPU evaluation of the same checkpoint to float32
    precision (TF32's 10-bit mantissa would miss by ~1e-3)."""
    res = train(TrainConfig(**{**RUN, "epochs": 2}, out=str(tmp_path / "m")), log=None)
    ck = read_checkpoint(tmp_path / "m")
    X, y = res.dataset.X_train.cpu().double(), res.dataset.y_train.cpu()
    ref = compute_margins(ck.model.double(), X, y)
    last = res.history[-1]
    assert math.isclose(last["gamma_bar"], ref.gamma_bar, rel_tol=1e-5)
    assert math.isclose(last["train_loss"], ref.loss, rel_tol=1e-5)
    assert math.isclose(last["theta_norm"], ref.theta_norm, rel_tol=1e-6)


def test_theorem2_monitors_on_a_gpu_run(tmp_path):
    res = train(TrainConfig(**{**RUN, "epochs": 1}, monitor_every=1, monitor_subset=64, out=str(tmp_path / "t")),
                log=None)
    t2 = read_metrics(tmp_path / "t")[-1]["theorem2"]
    assert t2["n_subset"] == 64 and math.isfinite(t2["velocity"])
    assert res.history[-1]["theorem2"]["velocity"] == t2["velocity"]
