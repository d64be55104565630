"""End-to-end benchmark: the full demo run (configs/demo.yaml), wall time and peak RSS per phase.

    python bench/bench_demo.py [--cache fresh|warm] [--limit N] [--arms current,generate,fp32,legacy]
                               [--json FILE] [--keep DIR]

Each arm runs the demo in its own subprocess (so peak memory is its own) into a temporary run folder.
``--cache fresh`` (default) uses an empty cache folder: model conversion, index build and adapter training
all happen, as on a first run; ``warm`` uses the user cache (adapters and index reused). Phases come from
``manifest["phases"]`` (``harness.phases``): load, prepare (with index and train inside it), generate,
latency_probe, score, report; nested phases overlap their parent. Per phase: wall seconds, peak and end RSS,
and ``held MiB``: what malloc had handed out and not taken back at the phase end (glibc; RSS minus it is free
memory the allocator keeps, or files mapped), which tells a leak from fragmentation.

Arms: ``current`` is the code and config as they are; ``fp32`` the same with ``model.dtype: float32`` (the
precision ``dtype: auto`` picks on CPUs without native bf16); ``legacy`` turns off the evaluation-pass
changes in-process (no length sorting, stop strings cut only after generating, no shared-prefix KV cache,
no continuous batching) so their effect is measured in the same run; ``generate`` is ``current`` with
continuous batching off (``ADAPTBENCH_CONTINUOUS=0``: every batch decodes through ``model.generate``).
``--keep DIR`` keeps each arm's run folder as ``DIR/<arm>`` (compare their answers and scores with
``adaptbench compare DIR/fp32 DIR/current``). Target for ``current`` on 2 CPU cores: the whole demo in <= 8
minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "configs" / "demo.yaml"
ORDER = ("load", "prepare", "index", "train", "generate", "latency_probe", "score", "report")


def worker(arm: str, cache: str, limit: int | None, out: Path) -> dict:
    """Run the demo once in this process; return the manifest's phases and costs."""
    from harness.config import load_config
    from harness.memory import process_peak_rss_bytes
    from harness.runner import run

    if arm == "legacy":
        from harness import batching

        os.environ["ADAPTBENCH_PREFIX_CACHE"] = "0"
        os.environ["ADAPTBENCH_CONTINUOUS"] = "0"

        batching.SORT_BY_LENGTH = False
        from harness.backends.stopping import StopStrings

        StopStrings.for_generate = lambda self, stops, width: None
    if arm == "generate":
        os.environ["ADAPTBENCH_CONTINUOUS"] = "0"
    overrides: dict = {"eval_set.limit": limit} if limit else {}
    if arm == "fp32":
        overrides["model.dtype"] = "float32"
    cfg = load_config(DEMO, overrides)
    if cache == "fresh":
        cfg.cache_dir = out / "cache"
    start = time.perf_counter()
    result = run(cfg, config_path=DEMO, run_dir=out / "run", progress=False)
    wall = time.perf_counter() - start
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    return {
        "arm": arm,
        "wall_seconds": round(wall, 1),
        "process_peak_rss_bytes": process_peak_rss_bytes(),
        "phases": manifest.get("phases", {}),
        "strategies": {
            sid: {
                k: v.get("cost", {}).get(k)
                for k in ("prepare_seconds", "peak_rss_bytes", "train_seconds", "peak_memory_bytes")
            }
            for sid, v in manifest["strategies"].items()
        },
    }


def run_arm(arm: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-demo-{arm}-") as tmp:
        cmd = [sys.executable, __file__, "--worker", arm, "--cache", args.cache, "--out", tmp]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if args.keep and (Path(tmp) / "run").is_dir():
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "run"), str(Path(args.keep) / arm))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        return {"arm": arm, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def mib(n: float | None) -> str:
    return f"{n / 2**20:.0f}" if n else "-"


def print_results(results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    for r in results:
        if "error" in r:
            print(f"{r['arm']}: failed: {r['error']}")
    if not ok:
        return
    names = [p for p in ORDER if any(p in r["phases"] for r in ok)]
    names += sorted({p for r in ok for p in r["phases"]} - set(names))
    print(
        f"{'phase':<15}"
        + "".join(f"{r['arm'] + ' s':>14}{'peak MiB':>10}{'end MiB':>9}{'held MiB':>10}" for r in ok)
    )
    for name in names:
        row = f"{name:<15}"
        for r in ok:
            p = r["phases"].get(name, {})
            secs = f"{p['seconds']:.1f}" if p else "-"
            row += f"{secs:>14}{mib(p.get('peak_rss_bytes')):>10}{mib(p.get('end_rss_bytes')):>9}"
            row += f"{mib(p.get('end_heap_in_use_bytes')):>10}"
        print(row)
    print(
        f"{'TOTAL wall':<15}"
        + "".join(f"{r['wall_seconds']:>14.1f}{mib(r['process_peak_rss_bytes']):>10}{'':>19}" for r in ok)
    )
    bases = [r for r in ok if r["arm"] in ("fp32", "legacy")]
    for r in ok:
        line = f"{r['arm']}: {r['wall_seconds'] / 60:.2f} min (target <= 8), process peak RSS {mib(r['process_peak_rss_bytes'])} MiB"
        for base in bases:
            if base is not r:
                line += f"; wall x{r['wall_seconds'] / base['wall_seconds']:.2f} of {base['arm']}"
        print(line)
    print(
        "\nper strategy (prepare s, peak RSS MiB of its prepare+predict window, train s, training peak MiB):"
    )
    for r in ok:
        for sid, c in r["strategies"].items():
            print(
                f"  {r['arm']:<8}{sid:<18}{c.get('prepare_seconds') or 0:>8.1f}{mib(c.get('peak_rss_bytes')):>8}"
                f"{c.get('train_seconds') or 0:>8.1f}{mib(c.get('peak_memory_bytes')):>8}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", choices=["fresh", "warm"], default="fresh")
    ap.add_argument("--limit", type=int, help="evaluate only the first N test examples")
    ap.add_argument("--arms", default="current", help="comma list of: current, generate, fp32, legacy")
    ap.add_argument("--keep", help="keep each arm's run folder as KEEP/<arm>")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cache, args.limit, Path(args.out))))
        return
    results = [run_arm(arm, args) for arm in args.arms.split(",")]
    print(f"demo={DEMO.name} cache={args.cache} limit={args.limit or 'all'}")
    print_results(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
