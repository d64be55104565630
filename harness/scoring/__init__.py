"""Scoring: the metric registry, the local ``evaluate`` metric modules and the scorer."""
