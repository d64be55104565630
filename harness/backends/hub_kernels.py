"""No compute kernels downloaded from the Hugging Face Hub unless the config trusts remote code.

Why: bitsandbytes (0.49 and later), when it is imported on a CPU with AVX512-BF16, calls
``kernels.get_kernel("kernels-community/quantization-bitsandbytes")``. The ``kernels`` package then asks the
Hub whether the publisher is trusted and downloads a compiled kernel that bitsandbytes uses for 4-bit
products. That is code from the Hub that the config never asked for. It is not recorded in the run
manifest, and the same run computes differently online than offline. Without a network the lookup still
runs first: 1.6 s for a failed DNS lookup on the CI machine class, and up to the HTTP timeout behind a
proxy that drops the connection. Loading a model, whatever the quantization, installs this guard first:
``kernels.get_kernel`` then refuses, bitsandbytes catches that and keeps its own kernels (what it does
offline). ``model.trust_remote_code: true`` lifts the guard, as it lets the model's own code run.
transformers fetches Hub kernels only when asked (``use_kernels``, a Hub attention implementation), through
its own reference to ``get_kernel``, which this guard leaves alone: that request is the user's.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Any

from harness.errors import AdaptbenchError

log = logging.getLogger(__name__)
_state = {"allowed": False}


class HubKernelRefused(AdaptbenchError, RuntimeError):
    """A library asked for a kernel from the Hub while the config does not trust remote code."""


def allowed() -> bool:
    """Whether kernels may come from the Hub in this process (the manifest records it)."""
    return _state["allowed"]


def guard(allow: bool) -> bool:
    """Refuse (``allow`` false) or permit Hub kernels from now on; returns whether ``kernels`` is installed.
    Call before anything imports bitsandbytes: it binds ``get_kernel`` when it is imported."""
    _state["allowed"] = allow
    if importlib.util.find_spec("kernels") is None:
        return False
    import kernels

    if not getattr(kernels.get_kernel, "_adaptbench_guard", False):
        kernels.get_kernel = _guarded(kernels.get_kernel)
    return True


def _guarded(get_kernel: Any) -> Any:
    @functools.wraps(get_kernel)
    def get(repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if not _state["allowed"]:
            log.info("refused a kernel from the Hub: %s (model.trust_remote_code is false)", repo_id)
            raise HubKernelRefused(
                f"adaptbench loads no kernel from the Hugging Face Hub ({repo_id!r}) unless "
                "model.trust_remote_code is true"
            )
        return get_kernel(repo_id, *args, **kwargs)

    get._adaptbench_guard = True  # type: ignore[attr-defined]
    return get
