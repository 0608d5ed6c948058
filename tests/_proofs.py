"""Shared by the proof tests: load a ``proofs/check_*.py`` script and compare the checks it
runs with the tags its proof cites (every cited step has a check, no check is orphaned)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

PROOFS = Path(__file__).resolve().parents[1] / "proofs"


def load_checker(name: str):
    """The module ``proofs/<name>.py``, freshly executed (a test may then break it)."""
    spec = importlib.util.spec_from_file_location(name, PROOFS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_proof_cites_exactly(results, proof: str, prefix: str) -> None:
    """The tags ``[<prefix>N]`` of ``proofs/<proof>`` equal the names of ``results``' checks."""
    text = (PROOFS / proof).read_text(encoding="utf-8")
    tags = set(re.findall(rf"\[({prefix}\d+)\]", text))
    names = {name.split()[0] for name, _ in results}
    assert tags, f"{proof} cites no checks"
    assert tags <= names, sorted(tags - names)
    assert names <= tags, sorted(names - tags)
