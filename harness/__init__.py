"""adaptbench core: config -> data -> strategies -> predictions -> scores -> report."""

__version__ = "0.1.0"
