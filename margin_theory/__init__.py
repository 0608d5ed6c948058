"""margin_theory: state, prove, check and measure the margin dynamics of quadratic
(dendritic) neural networks - the DIQNN of "Dendritic Integration Based Quadratic
Neural Networks Outperform Traditional Artificial Ones" (arXiv 2307.13609).

Modules (one per idea): ``models``, ``margins``, ``homogeneity`` (Lemma 1),
``xor_flow`` (Theorem 1), ``assumptions`` (Lemma 2 / Theorem 2 monitors), ``data``,
``train``, ``checkpoint``, ``check``, ``foreign`` (foreign checkpoints, ``check_model``),
``plot``, ``experiment``, ``bench``.

The top-level names below are imported lazily, so ``python -m margin_theory.xor_flow``
(numpy/scipy only) does not pay for importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from ._util import CheckpointError, ConfigError, DataError, MarginTheoryError, NonFiniteLossError

_LAZY = {
    "build_model": "models", "parameter_count": "models", "unique_parameter_count": "models",
    "compute_margins": "margins", "margin_values": "margins", "margin_regularised_loss": "margins",
    "load_dataset": "data", "train": "train", "TrainConfig": "train",
    "theorem2_report": "assumptions", "solve_xor_flow": "xor_flow", "check_model": "foreign",
    "numeric_homogeneity": "homogeneity", "symbolic_homogeneity": "homogeneity",
}


def load_checkpoint(path, device="cpu", *, spec=None):
    """Load a checkpoint written by the trainer (safetensors + JSON, no pickle), or a foreign
    state dict (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, bare ``.safetensors``)
    described by ``spec`` (e.g. ``{"model": "lowrank", "rank": 4, "dataset": "mnist"}``).

    Returns ``(model, config)``; see :func:`margin_theory.checkpoint.load_checkpoint`.
    """
    from .checkpoint import load_checkpoint as _load

    return _load(path, device=device, spec=spec)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'margin_theory' has no attribute {name!r}")


__all__ = sorted(list(_LAZY) + [
    "load_checkpoint", "MarginTheoryError", "DataError", "CheckpointError", "ConfigError",
    "NonFiniteLossError", "__version__",
])
