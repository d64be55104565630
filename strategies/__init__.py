"""Adaptation strategies. One module per strategy; each registers itself with ``@register``.

Adding a strategy = adding one module here (or in another package exposing the
``adaptbench.strategies`` entry point). Nothing in ``harness/`` changes.
"""
