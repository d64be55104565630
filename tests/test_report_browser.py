"""report.html in a real browser: headless Chromium renders it from disk without console errors.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``; ``.ci/run`` installs it). The
screenshot is kept under pytest's tmp dir and copied to ``reports/test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report import write_report
from tests.support.synthetic_run import write_synthetic_run

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "reports" / "test-artifacts"
BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)


def render(html: Path, png: Path, profile: Path, size: str = "1280,2000") -> list[str]:
    """Screenshot ``html`` headlessly; return the browser's console lines (errors, logs, CSP refusals)."""
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={png}",
        f"--window-size={size}",
        html.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs_browser
def test_console_check_catches_errors(tmp_path):
    """Control: the console check does see a script error."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>undefined_function()</script>", encoding="utf-8")
    lines = render(bad, tmp_path / "bad.png", tmp_path / "profile-bad", "400,300")
    assert any("Uncaught ReferenceError" in line for line in lines)


@needs_browser
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    run = write_synthetic_run(tmp_path / "run", decision={"weights": {"token_f1": 1.0}})
    report = write_report(run)
    png = tmp_path / "report.png"
    lines = render(report, png, tmp_path / "profile")
    assert lines == [], "\n".join(lines)
    assert png.is_file() and png.stat().st_size > 20_000  # a real page, not a blank one
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, ARTIFACTS / "report-render.png")
