"""The shared ``evaluate.Metric`` base of every metric module.

A metric file holds a module-level ``SPEC = MetricSpec(...)``, a function
``score(predictions, **needs) -> list[float | None] | dict`` and a one-line class::

    from harness.scoring import base

    class TokenF1(base.MetricModule):
        pass

(import the *module* ``base``, not the class: ``evaluate`` takes the first ``EvaluationModule`` subclass
it finds in the file as the metric). The base builds ``_info`` from ``SPEC`` and routes ``_compute`` to
``score``: ``predictions`` (and ``references`` when ``SPEC.needs`` has them) are the ``evaluate``
features; every other input arrives as a keyword argument. ``score`` returns the per-example scores
(``None`` = not applicable, left out of the mean) or a dict with ``"scores"`` and anything else worth
returning; the names in an optional module-level ``DIAGNOSTICS`` tuple are per-example lists the scorer
records next to the scores. The output adds ``"score"`` (mean of the non-``None`` scores).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import datasets
import evaluate


class MetricModule(evaluate.Metric):
    def _metric_module(self) -> ModuleType:
        return sys.modules[type(self).__module__]

    def _info(self) -> evaluate.MetricInfo:
        mod = self._metric_module()
        spec = mod.SPEC
        features = {"predictions": datasets.Value("string")}
        if "references" in spec.needs:
            features["references"] = datasets.Value("string")
        others = sorted(spec.needs - {"references"})
        return evaluate.MetricInfo(
            description=spec.description or (mod.__doc__ or ""),
            citation=getattr(mod, "CITATION", ""),
            inputs_description=(
                f"predictions (list[str]){', references (list[str])' if 'references' in spec.needs else ''}"
                + (f"; keyword inputs: {', '.join(others)}" if others else "")
                + ". Returns score (mean), scores (per example, None = not applicable)."
            ),
            features=datasets.Features(features),
        )

    def _compute(self, predictions, references=None, **kwargs: Any) -> dict[str, Any]:
        mod = self._metric_module()
        args = dict(kwargs)
        if references is not None:
            args["references"] = list(references)
        out = mod.score(list(predictions), **args)
        if not isinstance(out, dict):
            out = {"scores": list(out)}
        scores = out["scores"]
        values = [s for s in scores if s is not None]
        diagnostics = {k: out[k] for k in getattr(mod, "DIAGNOSTICS", ()) if isinstance(out.get(k), list)}
        return {
            "score": sum(values) / len(values) if values else 0.0,
            **out,
            "diagnostics": diagnostics,
        }
