"""No traffic to the Hugging Face Hub that the config did not ask for: no kernels, no telemetry.

**Kernels.** bitsandbytes (0.49 and later), when it is imported on a CPU with AVX512-BF16, calls
``kernels.get_kernel("kernels-community/quantization-bitsandbytes")``. The ``kernels`` package then asks the
Hub whether the publisher is trusted and downloads a compiled kernel that bitsandbytes uses for 4-bit
products. That is code from the Hub that the config never asked for. It is not recorded in the run
manifest, and the same run computes differently online than offline. Without a network the lookup still
runs first: 1.6 s for a failed DNS lookup on the CI machine class, and up to the HTTP timeout behind a
proxy that drops the connection. transformers does the same for some quantisation formats and
architectures (fp8, mxfp4, eetq, GGUF weights kept packed, rwkv, ...), through its own reference to
``get_kernel``. Loading a model, whatever the quantization, installs this guard on both references first:
they refuse, and the libraries keep their own code paths where they have one (what they do offline) or
stop with this module's message. ``model.trust_remote_code: true`` lifts the guard, as it lets the
model's own code run.

**Telemetry.** trl's trainers report each training run to the Hub (trainer, model architecture, whether peft,
how the data was loaded, device) from a background thread, unless ``CI`` is set. A harness that adapters
are trained with on business data sends nothing it was not asked to: telemetry is off for the process
(huggingface_hub's ``HF_HUB_DISABLE_TELEMETRY``, read once at its import, so set on its constants).
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
    """Telemetry off; Hub kernels refused (``allow`` false) or permitted from now on. Returns whether
    ``kernels`` is installed. Call before anything imports bitsandbytes: it binds ``get_kernel`` then."""
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True
    _state["allowed"] = allow
    if importlib.util.find_spec("kernels") is None:
        return False
    import kernels

    _wrap(kernels, "get_kernel")
    try:
        from transformers.integrations import hub_kernels as transformers_hub
    except ImportError:  # a transformers without kernel support: nothing of its own to guard
        return True
    if hasattr(transformers_hub, "get_kernel_hub"):
        _wrap(transformers_hub, "get_kernel_hub")
    return True


def _wrap(owner: Any, name: str) -> None:
    """``owner.name`` guarded, once."""
    current = getattr(owner, name)
    if not getattr(current, "_adaptbench_guard", False):
        setattr(owner, name, _guarded(current))


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
