"""Bounded run of scripts/fuzz.py (issue 14, item 15): random kill/resume sequences and
random corruptions thrown at a small run; nothing may be lost (metrics row for row equal
to the uninterrupted run, final weights equal, every corruption refused with one line,
every orphan removed, no temporary or lock file left). The emulated-kill mode keeps it to
seconds; ``python scripts/fuzz.py --mode sigkill`` runs the same loop with real SIGKILLs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("mt_fuzz", REPO / "scripts" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [0, 1])
def test_random_kills_resumes_and_corruptions_lose_nothing(tmp_path, seed):
    fz = _fuzz_module()
    counts = fz.fuzz(tmp_path, rounds=8, seed=seed, mode="inproc")
    assert counts["rounds"] == 8
    assert counts["kills"] + counts["completed"] + counts["corruptions_refused"] >= 1


def test_the_fuzzer_notices_duplicated_rows(tmp_path, monkeypatch):
    """The fuzzer's checks can fail: a trainer whose resumed runs repeat the checkpoint's
    metrics row (the original epoch-0 bug, for any epoch) is caught."""
    import json

    import margin_theory.train as tr

    fz = _fuzz_module()
    real = tr._train

    def duplicating(config, **kw):
        res = real(config, **kw)
        if config.resume and res.final.get("resumed_from_epoch") is not None:
            path = Path(config.out) / "metrics.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            k = res.final["resumed_from_epoch"]
            rows.insert(k + 1, rows[k])
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return res

    monkeypatch.setattr(tr, "_train", duplicating)
    with pytest.raises(fz.FuzzFailure):
        fz.fuzz(tmp_path, rounds=10, seed=5, mode="inproc")
