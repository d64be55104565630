"""Refactors must not move a number: the tiny-model run's metrics equal the pinned golden file.

The golden file was produced by ``tests/fixtures/parity/make_golden.py``; regenerate it only when a
metric's definition changes on purpose, and say so in the commit.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import FIXTURES
from tests.parity_run import parity_numbers, run_parity


@pytest.mark.slow
def test_scores_match_the_golden_run(tmp_path):
    golden = json.loads((FIXTURES / "parity" / "golden_scores.json").read_text(encoding="utf-8"))
    now = parity_numbers(run_parity(tmp_path))
    assert sorted(now) == sorted(golden)
    for sid, rows in golden.items():
        assert sorted(now[sid]) == sorted(rows), sid
        for eid, metrics in rows.items():
            assert sorted(now[sid][eid]) == sorted(metrics), (sid, eid)
            for name, want in metrics.items():
                got = now[sid][eid][name]
                if want is None:
                    assert got is None, (sid, eid, name, got)
                else:
                    assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (sid, eid, name, got, want)
