"""Report rendering cost vs eval-set size, and the Holm implementations used by the decision engine.

    python bench/bench_report.py

Prints seconds for analyse + decide + render (report.html, summary.md, scores.csv, decision.json) of a
synthetic three-strategy run at several sizes, and the time of statsmodels' Holm vs the numpy
``holm_fast`` the sensitivity search calls thousands of times (same results, checked in tests).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.decision import decide  # noqa: E402
from harness.decision.analysis import analyze  # noqa: E402
from harness.decision.stats import holm, holm_fast  # noqa: E402
from harness.report import write_report  # noqa: E402
from tests.support.synthetic_run import write_synthetic_run  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        print(
            f"{'examples':>9} {'analyse s':>10} {'decide s':>9} {'render s':>9} {'html KB':>8} {'x vs 40':>8}"
        )
        for n in (40, 200, 1000):
            run = write_synthetic_run(Path(tmp) / f"run{n}", n=n)
            t_an = timed(lambda run=run: analyze(run))
            an = analyze(run)
            t_dec = timed(lambda an=an: decide(an))
            t_all = timed(lambda run=run: write_report(run))
            base = base or t_all
            size = (run / "report.html").stat().st_size / 1024
            print(f"{n:>9} {t_an:>10.2f} {t_dec:>9.2f} {t_all:>9.2f} {size:>8.0f} {t_all / base:>8.2f}")
    p = list(np.random.default_rng(0).uniform(0, 0.1, 3))
    t_sm = timed(lambda: holm(p), 20)
    t_np = timed(lambda: holm_fast(p), 20)
    print(
        f"\nHolm, 3 p-values: statsmodels {1000 * t_sm:.2f} ms, numpy {1000 * t_np:.3f} ms, ratio {t_sm / t_np:.0f}x"
    )


if __name__ == "__main__":
    main()
