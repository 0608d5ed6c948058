"""margin_theory: state, prove, check and measure the margin dynamics of quadratic
(dendritic) neural networks - the DIQNN of "Dendritic Integration Based Quadratic
Neural Networks Outperform Traditional Artificial Ones" (arXiv 2307.13609).

Modules (one per idea): ``models``, ``margins``, ``homogeneity`` (Lemma 1),
``xor_flow`` (Theorem 1), ``assumptions`` (Lemma 2 / Theorem 2 monitors), ``data``,
``train``, ``checkpoint``, ``check``, ``plot``, ``experiment``, ``bench``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._util import CheckpointError, ConfigError, DataError, MarginTheoryError, NonFiniteLossError
from .margins import compute_margins, margin_regularised_loss, margin_values
from .models import build_model, parameter_count, unique_parameter_count


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint written by the trainer (safetensors + JSON, no pickle).

    Returns ``(model, config)``; see :func:`margin_theory.checkpoint.load_checkpoint`.
    """
    from .checkpoint import load_checkpoint as _load

    return _load(path, device=device)


__all__ = [
    "build_model", "parameter_count", "unique_parameter_count", "compute_margins",
    "margin_values", "margin_regularised_loss", "load_checkpoint", "MarginTheoryError",
    "DataError", "CheckpointError", "ConfigError", "NonFiniteLossError", "__version__",
]
