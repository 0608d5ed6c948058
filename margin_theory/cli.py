"""``margin-theory`` console script: one subcommand per module.

``margin-theory xor-flow ...`` is the same as ``python -m margin_theory.xor_flow ...``.
"""
from __future__ import annotations

import importlib
import sys

#: subcommand -> module (each module has ``main(argv) -> int``)
COMMANDS = {
    "xor-flow": ("xor_flow", "Theorem 1: the XOR gradient flow, solved with scipy"),
    "homogeneity": ("homogeneity", "Lemma 1: symbolic and numeric homogeneity checks"),
    "data": ("data", "list, verify or download datasets"),
    "train": ("train", "train a model and record margin trajectories"),
    "plot": ("plot", "plot a training run's metrics"),
    "check": ("check", "Theorem 2: check the assumptions on saved checkpoints"),
    "experiment": ("experiment", "reproduce a table or figure of the paper"),
    "maxmargin": ("maxmargin", "the max-margin optimum GD converges to (SVM / SDP relaxation)"),
    "bench": ("bench", "benchmark the trainer and theory tools against references"),
}


def _usage() -> str:
    lines = ["usage: margin-theory COMMAND [ARGS...]", "", "commands:"]
    for name, (_, helptext) in COMMANDS.items():
        lines.append(f"  {name:<12} {helptext}")
    lines.append("")
    lines.append("Run 'margin-theory COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        sys.stderr.write(f"margin-theory: error: unknown command {cmd!r}; choose from {', '.join(COMMANDS)}\n")
        return 2
    module = importlib.import_module(f"margin_theory.{COMMANDS[cmd][0]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
