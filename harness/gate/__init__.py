"""Regression testing and release gates on run folders or exported baselines.

* ``runs``: a run folder or a baseline file -> one in-memory ``RunData``; ``export_baseline``;
* ``clustered``: paired tests that resample clusters of examples; power (minimum detectable effect);
* ``compare``: ``compare_runs`` (per-metric paired differences, Holm, flips, latency/cost deltas);
* ``gate``: the policy file (pydantic) and ``evaluate`` (absolute and non-inferiority rules, Holm);
* ``verdict``: better / worse / equivalent / inconclusive, and the power note;
* ``outputs``: terminal table, Markdown, JSON, JUnit XML, ``compare.html``.
"""
