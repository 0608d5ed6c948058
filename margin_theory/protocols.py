"""Protocols: the named presets of every choice on which the paper's text and the
authors' public code differ (SPEC §2 "Protocols"). Defined once, here; the trainer
(``--protocol NAME``), the experiments (``protocol = "NAME"``), checkpoints (through the
run's config) and every report refer to a protocol by its name.

========================  ===========================  ====================================
choice                    ``paper`` (the spec, default)  ``authors`` (their public code)
========================  ===========================  ====================================
initialisation            U(+-1/sqrt(d)), full head      full head N(0, 1/d^2) symmetrised;
                          symmetrised                    lowrank kaiming_normal_(a=10)
full quadratic head       f_i = x^T W_i x                f_i = (x^T W_i x + w_i . x)/2
reported test accuracy    after the last epoch           best over evaluations every 20 steps
margin read for Fig. 5    gamma_bar = mean q/||theta||^L  output-normalised (``gamma_output``)
========================  ===========================  ====================================

The authors' facts are read from ``liuchongming1999/dendrite-inspired-neural-network``,
``quadratic_neural_network-main/``: ``model/Linear_quadratic.py`` (``General_quadratic``,
``Low_dimensional_quadratic``: inits and the ``(y + y1)/2`` output) and ``MNIST/MNIST.py``
(``if i % 20 == 0``: test accuracy every 20 steps, ``best_prec = max(prec, best_prec)``).
Every margin definition is recorded under every protocol; the last two rows are how the
reports read the results. The margin-regularised loss (paper eq. 5) is not in the authors'
code; under ``authors`` it is still available (``--margin-reg``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ._util import ConfigError

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "protocol_names", "RECIPES", "with_recipe"]


@dataclass(frozen=True)
class Protocol:
    """One named protocol: a row of the module's table."""

    name: str
    init: str                   # the heads' initialisation scheme (``models.INITS``)
    linear_term: bool           # the full quadratic head's linear term and 1/2 (``QuadraticHead``)
    eval_every_steps: int       # also evaluate every K SGD steps (batch index i % K == 0) and report the best


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", init="paper", linear_term=False, eval_every_steps=0),
    "authors": Protocol("authors", init="authors", linear_term=True, eval_every_steps=20),
}


def protocol_names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; :class:`ConfigError` naming the valid ones otherwise."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}") from None


#: the paper's training settings per data family (SPEC §7), named so that an experiment
#: definition says ``recipe = "cifar-resnet"`` instead of copying them; the table's own keys win
RECIPES: dict[str, dict] = {
    "mnist-sgd": {"lr": 0.01, "batch_size": 100, "epochs": 10},
    "cifar-resnet": {"lr": 0.002, "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 128, "epochs": 250,
                     "lr_milestones": [150], "lr_gamma": 0.1, "augment": True, "normalize": True},
}


def with_recipe(settings: dict) -> dict:
    """``settings`` with its ``recipe`` key (if any) replaced by that recipe's values, which the
    table's own keys override; :class:`ConfigError` for an unknown recipe."""
    if "recipe" not in settings:
        return dict(settings)
    name = settings["recipe"]
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = {k: list(v) if isinstance(v, list) else v for k, v in RECIPES[name].items()}   # never shared
    return {**recipe, **{k: v for k, v in settings.items() if k != "recipe"}}
