"""Turn a run folder's files into the numbers the decision and the report need.

Everything here is recomputed from ``scores.json`` (per-example scores, cost), ``predictions.jsonl``
(latency, tokens, retrieved chunks), ``manifest.json`` (device) and ``config.yaml`` (the
``decision:`` section), so ``adaptbench report RUN_DIR`` needs no model and re-running it gives the
same numbers (seeded bootstrap).

All strategies are analysed on the examples every one of them answered, and one bootstrap index
matrix is shared by all strategies, which makes every comparison paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from harness.config import DecisionConfig, ScoringConfig, validation_message
from harness.decision.measures import MEASURES, QUALITY_METRICS, Measure, measure
from harness.decision.stats import (
    Interval,
    bootstrap_indices,
    family,
    nanmean,
    nanpercentile,
    percentile_interval,
)
from harness.errors import ConfigError, DataError
from harness.rundir import load_predictions, read_json
from harness.scoring.registry import available_metrics

GB, MB = 1e9, 1e6
CPU_PRICE_PER_HOUR, GPU_PRICE_PER_HOUR = 0.10, 2.50
# Per-example arrays the analysis derives itself (not scores, not diagnostics).
DERIVED = ("pass_ms", "new_tokens", "serving_cost_per_1k_usd", "total_cost_per_1k_usd")
PROBE_SERIES = ("e2e_ms", "ttft_ms", "tpot_ms")


def is_metric(name: str) -> bool:
    """A registered metric's score; any other per-example number in scores.json is a diagnostic."""
    return name in available_metrics()


@dataclass
class StrategyData:
    name: str
    arrays: dict[str, np.ndarray]  # per-example values on the common examples (NaN = not scored)
    consts: dict[str, float]  # one number per strategy (costs)
    notes: list[str] = field(default_factory=list)
    training: dict[str, Any] | None = None  # loss curves etc.
    probe: dict[str, np.ndarray] = field(default_factory=dict)  # latency probe series over shared rounds


@dataclass
class Analysis:
    run_name: str
    primary: str
    decision_cfg: DecisionConfig
    scoring_cfg: ScoringConfig
    price_per_hour: float
    device: str
    examples: list[dict[str, Any]]  # common examples: id, question, reference, tags
    strategies: dict[str, StrategyData]
    quality: list[str]  # quality measures present for at least one strategy, display order
    point: dict[str, dict[str, float]]  # sid -> measure -> value
    boot: dict[str, dict[str, np.ndarray]]  # sid -> measure -> (B,) bootstrap values
    ci: dict[str, dict[str, Interval]]
    by_tag: dict[str, dict[str, dict[str, Interval]]]  # tag -> sid -> metric -> CI
    tag_counts: dict[str, int]
    comparisons: dict[str, list[dict[str, Any]]]  # metric -> pairwise comparisons (Holm within metric)
    warnings: list[str]
    scores: dict[str, Any]
    manifest: dict[str, Any]
    predictions: dict[tuple[str, str], dict[str, Any]]


def read_run_config(
    run_dir: Path, decision_overrides: dict[str, Any] | None = None
) -> tuple[DecisionConfig, ScoringConfig]:
    """The ``decision:`` and ``scoring:`` sections of the run's saved config (defaults when absent),
    with ``decision_overrides`` (command-line what-ifs) replacing keys of ``decision:``."""
    path = run_dir / "config.yaml"
    data: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = loaded if isinstance(loaded, dict) else {}
    out = []
    for key, cls in (("decision", DecisionConfig), ("scoring", ScoringConfig)):
        section = dict(data.get(key) or {})
        source = str(path)
        if key == "decision" and decision_overrides:
            section.update(decision_overrides)
            source = f"{path} (with command-line overrides)"
        try:
            out.append(cls.model_validate(section))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, source, (key,))) from None
    return out[0], out[1]


def hardware_price(cfg: DecisionConfig, device: str) -> float:
    if cfg.price_per_hour_usd is not None:
        return cfg.price_per_hour_usd
    return GPU_PRICE_PER_HOUR if device == "cuda" else CPU_PRICE_PER_HOUR


def peak_memory_bytes(cost: dict[str, Any]) -> tuple[float | None, str]:
    """Strategy-reported peak (e.g. training) vs the process peak: GPU when measured, else RSS."""
    reported = cost.get("peak_memory_bytes") or 0
    if cost.get("peak_cuda_bytes"):
        return float(max(reported, cost["peak_cuda_bytes"])), "GPU"
    rss = cost.get("peak_rss_bytes") or 0
    value = max(reported, rss)
    return (float(value) if value else None), "RSS"


def training_curves(run_dir: Path, sid: str, cost: dict[str, Any]) -> dict[str, Any] | None:
    """Loss curves from ``training/<id>.json`` (QLoRA helper) or ``cost.training``."""
    record: dict[str, Any] | None = None
    path = run_dir / "training" / f"{sid}.json"
    if path.is_file():
        try:
            record = read_json(path)
        except ValueError:
            record = None
    if record is None and isinstance(cost.get("training"), dict):
        record = cost["training"]
    if not record:
        return None
    curve = record.get("loss_curve") or {}
    train = [p for p in curve.get("train") or [] if _finite(p.get("loss")) and _finite(p.get("step"))]
    val = [p for p in curve.get("validation") or [] if _finite(p.get("loss")) and _finite(p.get("step"))]
    return {**{k: v for k, v in record.items() if k != "loss_curve"}, "train": train, "validation": val}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _f(v: Any) -> float:
    return float(v) if _finite(v) else float("nan")


def measure_samples(m: Measure, sd: StrategyData, idx: np.ndarray) -> np.ndarray:
    """Values of measure ``m`` for each row of ``idx`` (a row = one resample of example indices)."""
    if m.kind == "const":
        return np.full(idx.shape[0], sd.consts.get(m.name, np.nan))
    if m.kind == "probe":  # ``idx`` resamples probe rounds here, not examples
        series = sd.probe.get(m.source)
        if series is None or series.size == 0:
            return np.full(idx.shape[0], np.nan)
        stat = nanmean if m.percentile is None else nanpercentile(m.percentile)
        return stat(series[idx], axis=-1)
    if m.kind == "ratio":
        tok = sd.arrays["new_tokens"][idx].sum(axis=-1)
        sec = sd.arrays["pass_ms"][idx].sum(axis=-1) / 1000.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sec > 0, tok / sec, np.nan)
    arr = sd.arrays.get(m.name)
    if arr is None:
        return np.full(idx.shape[0], np.nan)
    return nanmean(arr[idx], axis=-1)


def _strategy_data(
    run_dir: Path, sid: str, entry: dict[str, Any], example_ids: list[str], preds: dict, price: float, cfg
) -> StrategyData:
    per = entry.get("per_example") or {}
    names: set[str] = set()
    for eid in example_ids:
        names.update(k for k, v in (per.get(eid) or {}).items() if _finite(v) or v is None)
    # Scores and diagnostics alike; sorted, so scores.csv columns do not depend on the hash seed.
    arrays = {n: np.array([_f((per.get(e) or {}).get(n)) for e in example_ids]) for n in sorted(names)}
    recs = [preds.get((sid, e)) or {} for e in example_ids]
    latency_s = np.array([_f(r.get("latency_s")) for r in recs])  # share of its batch's wall time
    arrays["pass_ms"] = latency_s * 1000.0
    arrays["new_tokens"] = np.array([_f(r.get("new_tokens")) for r in recs])
    cost = dict(entry.get("cost") or {})
    train_s = _f(cost.get("train_seconds"))
    index_s = _f(cost.get("index_build_seconds"))
    setup_usd = (np.nan_to_num(train_s) + np.nan_to_num(index_s)) / 3600.0 * price
    arrays["serving_cost_per_1k_usd"] = latency_s / 3600.0 * price * 1000.0
    arrays["total_cost_per_1k_usd"] = (
        arrays["serving_cost_per_1k_usd"] + setup_usd / cfg.amortize_queries * 1000
    )
    mem, mem_kind = peak_memory_bytes(cost)
    adapter = _f(cost.get("adapter_bytes"))
    index = _f(cost.get("index_bytes"))
    batches = sorted({r["batch_seconds"] for r in recs if _finite(r.get("batch_seconds"))})
    consts = {
        "train_time_min": np.nan_to_num(train_s) / 60.0,
        "index_build_time_min": np.nan_to_num(index_s) / 60.0,
        "setup_time_min": _f(cost.get("prepare_seconds")) / 60.0,
        "peak_memory_gb": mem / GB if mem else float("nan"),
        "adapter_mb": np.nan_to_num(adapter) / MB,
        "index_mb": np.nan_to_num(index) / MB,
        "disk_mb": (np.nan_to_num(adapter) + np.nan_to_num(index)) / MB,
        "batch_seconds": float(np.mean(batches)) if batches else float("nan"),
    }
    notes = [str(n) for n in cost.get("notes") or []]
    if mem_kind == "RSS" and mem:
        notes.append("peak memory = peak RSS while this strategy ran (includes the shared base model)")
    return StrategyData(
        name=entry.get("name") or sid,
        arrays=arrays,
        consts=consts,
        notes=notes,
        training=training_curves(run_dir, sid, cost),
    )


def attach_probe(run_dir: Path, sdata: dict[str, StrategyData]) -> list[int]:
    """Load ``latency.jsonl`` into each strategy's ``probe`` series over the rounds every strategy has
    (requests are paired by round: the same example, sent back to back). Returns those rounds."""
    from harness.latency import LATENCY_FILE

    path = run_dir / LATENCY_FILE
    if not path.is_file():
        return []
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in load_predictions(path):  # the same torn-line-tolerant JSONL reader
        if rec.get("strategy") in sdata and isinstance(rec.get("round"), int):
            by.setdefault(rec["strategy"], {})[rec["round"]] = rec
    if set(by) != set(sdata):
        return []
    rounds = sorted(set.intersection(*(set(v) for v in by.values())))
    for sid, sd in sdata.items():
        for series in PROBE_SERIES:
            key = series.replace("_ms", "_s")
            sd.probe[series] = np.array([_f(by[sid][r].get(key)) * 1000.0 for r in rounds])
    return rounds


def analyze(run_dir: Path, decision_overrides: dict[str, Any] | None = None) -> Analysis:
    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.json"
    if not scores_path.is_file():
        raise DataError(
            f"{run_dir}: no scores.json; finish the run first (adaptbench run CONFIG --out {run_dir})"
        )
    scores = read_json(scores_path)
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    decision_cfg, scoring_cfg = read_run_config(run_dir, decision_overrides)
    device = (manifest.get("model") or {}).get("device") or "cpu"
    price = hardware_price(decision_cfg, device)
    records = load_predictions(run_dir / "predictions.jsonl")
    preds = {(r["strategy"], r["example_id"]): r for r in records}
    entries: dict[str, dict[str, Any]] = scores.get("strategies") or {}
    if not entries:
        raise DataError(f"{scores_path}: no strategies were scored")
    warnings: list[str] = []
    id_sets = [set((e.get("per_example") or {}).keys()) for e in entries.values()]
    common = sorted(set.intersection(*id_sets)) if id_sets else []
    union = set.union(*id_sets) if id_sets else set()
    if len(union) > len(common):
        warnings.append(
            f"strategies answered different examples; compared on the {len(common)} all of them answered "
            f"({len(union) - len(common)} left out)"
        )
    info: dict[str, dict[str, Any]] = {}
    for r in records:
        info.setdefault(r["example_id"], r)
    examples = [
        {
            "id": e,
            "question": info.get(e, {}).get("question", ""),
            "reference": info.get(e, {}).get("reference", ""),
            "tags": list(info.get(e, {}).get("tags") or []) or ["untagged"],
        }
        for e in common
    ]
    sdata = {
        sid: _strategy_data(run_dir, sid, entry, common, preds, price, decision_cfg)
        for sid, entry in entries.items()
    }
    primary = scores.get("primary_metric", "token_f1")
    metric_list = list(scores.get("metrics") or [primary])
    quality = [m for m in metric_list if any(m in sd.arrays for sd in sdata.values())]
    extra_q = sorted(
        {n for sd in sdata.values() for n in sd.arrays if n not in quality and is_metric(n)},
        key=lambda n: (n not in QUALITY_METRICS, n),
    )
    quality += extra_q
    cl = decision_cfg.confidence_level
    idx = bootstrap_indices(len(common), decision_cfg.bootstrap_resamples, _seed(manifest))
    names = quality + [n for n in MEASURES if MEASURES[n].group != "quality"]
    rounds = attach_probe(run_dir, sdata)
    probe_full = np.arange(len(rounds))[None, :]
    probe_idx = bootstrap_indices(len(rounds), decision_cfg.bootstrap_resamples, _seed(manifest) + 1)
    point: dict[str, dict[str, float]] = {}
    boot: dict[str, dict[str, np.ndarray]] = {}
    ci: dict[str, dict[str, Interval]] = {}
    full = np.arange(len(common))[None, :]
    for sid, sd in sdata.items():
        point[sid], boot[sid], ci[sid] = {}, {}, {}
        for n in names:
            m = measure(n)
            one, many, have = (probe_full, probe_idx, rounds) if m.kind == "probe" else (full, idx, common)
            est = float(measure_samples(m, sd, one)[0]) if have else float("nan")
            samples = measure_samples(m, sd, many) if have else np.full(idx.shape[0], np.nan)
            point[sid][n] = est
            boot[sid][n] = samples
            if m.kind == "probe":
                valid = int(np.isfinite(sd.probe.get(m.source, np.array([]))).sum())
            else:
                valid = int(np.isfinite(sd.arrays[n]).sum()) if n in sd.arrays else len(common)
            if m.kind == "const":
                ci[sid][n] = Interval(est, est, est, valid)
            else:
                lo, hi = percentile_interval(samples, cl)
                ci[sid][n] = Interval(est, lo, hi, valid)
    by_tag, tag_counts = _by_tag(examples, sdata, quality, decision_cfg, idx.shape[0], _seed(manifest))
    comparisons = _pairwise(sdata, quality, decision_cfg, _seed(manifest))
    return Analysis(
        run_name=run_dir.name,
        primary=primary,
        decision_cfg=decision_cfg,
        scoring_cfg=scoring_cfg,
        price_per_hour=price,
        device=device,
        examples=examples,
        strategies=sdata,
        quality=quality,
        point=point,
        boot=boot,
        ci=ci,
        by_tag=by_tag,
        tag_counts=tag_counts,
        comparisons=comparisons,
        warnings=warnings,
        scores=scores,
        manifest=manifest,
        predictions=preds,
    )


def _seed(manifest: dict[str, Any]) -> int:
    seed = manifest.get("seed", 0)
    return int(seed) if isinstance(seed, int) else 0


def _by_tag(examples, sdata, quality, cfg: DecisionConfig, resamples: int, seed: int):
    tags = sorted({t for ex in examples for t in ex["tags"]})
    out: dict[str, dict[str, dict[str, Interval]]] = {}
    counts: dict[str, int] = {}
    for tag in tags:
        rows = np.array([i for i, ex in enumerate(examples) if tag in ex["tags"]])
        counts[tag] = len(rows)
        sub_idx = rows[bootstrap_indices(len(rows), resamples, seed)]
        out[tag] = {}
        for sid, sd in sdata.items():
            out[tag][sid] = {}
            for m in quality:
                arr = sd.arrays.get(m)
                if arr is None or not np.isfinite(arr[rows]).any():
                    continue
                lo, hi = percentile_interval(nanmean(arr[sub_idx], axis=-1), cfg.confidence_level)
                out[tag][sid][m] = Interval(
                    float(nanmean(arr[rows])), lo, hi, int(np.isfinite(arr[rows]).sum())
                )
    return out, counts


def _pairwise(sdata, quality, cfg: DecisionConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The test family (``stats.family``): every pair of strategies on every quality metric, exact
    McNemar for binary metrics, sign-flip permutation otherwise, Holm within the metric."""
    out: dict[str, list[dict[str, Any]]] = {}
    specs = available_metrics()
    for m in quality:
        arrays = {s: sd.arrays[m] for s, sd in sdata.items() if m in sd.arrays}
        spec = specs.get(m)
        cmps = family(
            arrays,
            m,
            binary=bool(spec is not None and spec.binary),
            resamples=cfg.bootstrap_resamples,
            permutation_resamples=cfg.permutation_resamples,
            seed=seed,
            confidence=cfg.confidence_level,
            alpha=cfg.alpha,
        )
        if cmps:
            out[m] = [c.to_dict() for c in cmps]
    return out
