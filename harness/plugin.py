"""The strategy contract (shim on arch/adapters re-exporting today's modules; arch/backends owns this file)."""

from strategies.base import Answer, Params, RunContext, Strategy
from strategies.registry import available, build, get, register

__all__ = ["Answer", "Params", "RunContext", "Strategy", "available", "build", "get", "register"]
