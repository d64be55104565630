"""What every ``adaptbench`` subcommand shares: one-line user errors, -v/--quiet, resume-on-interrupt."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from harness.errors import AdaptbenchError


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in (
        "transformers",
        "datasets",
        "evaluate",
        "sentence_transformers",
        "peft",
        "trl",
        "accelerate",
        "bitsandbytes",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are hard dependencies
        pass


def user_errors(fn):
    """Turn AdaptbenchError into one line on stderr and a non-zero exit; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdaptbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _version() -> str:
    from harness import __version__

    try:
        return importlib.metadata.version("adaptbench")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return __version__


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """-v: library logs too; --quiet: errors only; default: adaptbench's progress messages."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("adaptbench").setLevel(logging.ERROR if quiet else logging.INFO)
    if not verbose:
        _quiet_libraries()


@contextlib.contextmanager
def stopping(
    config: str, fallback: Path, command: str = "run", options: dict[str, Any] | None = None
) -> Iterator[None]:
    """Ctrl-C / SIGTERM: the runner stops after the batch in flight (``harness.signals``); say how to
    resume and exit 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells expect."""
    from harness import signals

    try:
        with signals.graceful_stop():
            yield
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        where = getattr(exc, "run_dir", None) or signals.run_dir()
        out = shlex.quote(str(where)) if where else f"<run folder in {fallback}>"
        flags = "".join(
            f" --{name.replace('_', '-')} {shlex.quote(str(v))}"
            for name, value in (options or {}).items()
            for v in (value if isinstance(value, (list, tuple)) else [value])
            if v is not None
        )
        click.echo(
            f"\ninterrupted; finished batches are saved. Resume with: "
            f"adaptbench {command} {shlex.quote(config)}{flags} --out {out}",
            err=True,
        )
        sys.exit(code)


def verbosity(fn):
    """``-v/--verbose`` and ``-q/--quiet`` on a subcommand too (``adaptbench run X -v`` as well as
    ``adaptbench -v run X``); the subcommand's flags win over the group's."""

    def apply(flag: str):
        def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
            if value:
                set_verbosity(verbose=flag == "verbose", quiet=flag == "quiet")

        return callback

    fn = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=apply("quiet"), help="Errors only."
    )(fn)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=apply("verbose"),
        help="Show library logs.",
    )(fn)
