"""``adaptbench gate``: absolute and non-inferiority rules, Holm, --strict, exit codes, JUnit, policy errors."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.support.gate_runs import set_scores
from tests.support.synthetic_run import write_synthetic_run

N = 80


@pytest.fixture()
def pair(tmp_path):
    a = write_synthetic_run(tmp_path / "base", n=N, strategies=("rag", "qlora"), seed=0)
    b = tmp_path / "cand"
    shutil.copytree(a, b)
    return a, b


def _drop(run, delta, sd=0.1, seed=0, sid="rag", metric="token_f1"):
    noise = np.random.default_rng(seed).normal(0, sd, N)
    noise -= noise.mean()  # the planted drop is exactly ``delta``
    set_scores(run, sid, metric, lambda i, e, v: v - delta + noise[i])


def gate(tmp_path, run, policy: str, *extra: str):
    pol = tmp_path / "gates.yaml"
    pol.write_text(policy, encoding="utf-8")
    out = tmp_path / "gate-out"
    r = CliRunner().invoke(main, ["gate", str(run), "--policy", str(pol), "--out", str(out), *extra])
    data = json.loads((out / "gate.json").read_text()) if (out / "gate.json").is_file() else None
    if data is not None:
        (out / "gate.json").unlink()
    return r, data


def _rule(data, name_start):
    return next(r for r in data["rules"] if r["name"].startswith(name_start))


@pytest.mark.parametrize(
    ("rule", "passes"),
    [
        ("rag.token_f1 >= 0.30", True),
        ("rag.token_f1 >= 0.60", False),
        ("rag.latency_p95_ms <= 800", True),
        ("rag.latency_p95_ms <= 100", False),
        ("qlora.total_cost_per_1k_usd <= 0.05", True),
        ("qlora.total_cost_per_1k_usd <= 0.001", False),
        ("rag.tokens_per_s > 1", True),
    ],
)
def test_absolute_point_rules(pair, tmp_path, rule, passes):
    _, b = pair
    r, data = gate(tmp_path, b, f"rules:\n  - {rule}\n")
    assert r.exit_code == (0 if passes else 1), r.output
    assert data["rules"][0]["passed"] is passes and data["rules"][0]["p_value"] is None


def test_interval_rules_use_the_bound(pair, tmp_path):
    _, b = pair
    est = _rule(gate(tmp_path, b, "rules: ['rag.token_f1 >= 0.1']\n")[1], "rag")
    thr = est["estimate"] - 0.005  # the point clears it, the lower bound does not
    assert est["low"] < thr
    r, data = gate(tmp_path, b, f"rules:\n  - {{check: rag.token_f1 >= {thr}, on: lower_bound}}\n")
    assert r.exit_code == 1 and "lower bound of the 95% interval" in data["rules"][0]["evidence"]
    # Lenient bound: the point misses it, but the violation is not significant -> pass.
    thr = est["estimate"] + 0.005
    r, data = gate(tmp_path, b, f"rules:\n  - {{check: rag.token_f1 >= {thr}, on: upper_bound}}\n")
    assert r.exit_code == 0 and data["rules"][0]["p_value"] > 0.05
    # Far off: a significant violation fails even on the lenient bound.
    r, data = gate(tmp_path, b, "rules:\n  - {check: rag.token_f1 >= 0.9, on: upper_bound}\n")
    assert r.exit_code == 1 and data["rules"][0]["p_adjusted"] < 0.05
    r, _ = gate(tmp_path, b, "rules:\n  - {check: rag.latency_p95_ms <= 200, on: lower_bound}\n")
    assert r.exit_code == 1


def test_noise_passes_a_planted_drop_fails(pair, tmp_path):
    a, b = pair
    _drop(b, 0.01)  # a 1-point drop in noise, margin 2 points
    r, data = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a))
    assert r.exit_code == 0, r.output
    rule = data["rules"][0]
    assert rule["passed"] and rule["point_drop"] and rule["verdict"] == "inconclusive"
    assert rule["power"].startswith(f"n = {N}: drops ≥ ")
    _drop(b, 0.12)
    r, data = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a))
    assert r.exit_code == 1 and data["rules"][0]["verdict"] == "worse"
    assert "drop" in data["rules"][0]["evidence"] and data["rules"][0]["p_adjusted"] < 0.05


def test_strict_fails_any_point_drop(pair, tmp_path):
    a, b = pair
    _drop(b, 0.01)
    r, data = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a), "--strict")
    assert r.exit_code == 1 and "strict" in data["rules"][0]["evidence"]
    _drop(b, -0.05, sd=0.0)  # an improvement passes even with --strict
    r, _ = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a), "--strict")
    assert r.exit_code == 0


def test_holm_across_the_rules_of_a_policy(pair, tmp_path):
    a, b = pair
    _drop(b, 0.04)  # one-sided p ~ 0.035 for "drop > 2 points"
    r, alone = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a))
    p = alone["rules"][0]["p_value"]
    assert 0.025 < p < 0.05 and r.exit_code == 1
    # Add a second rule (qlora unchanged, p = 1): Holm doubles the smallest p -> no longer significant.
    r, both = gate(tmp_path, b, "max_drop:\n  token_f1: 0.02\n", "--baseline", str(a))
    assert r.exit_code == 0 and both["holm_family"] == 2
    rag = _rule(both, "rag.")
    assert rag["p_value"] == pytest.approx(p) and rag["p_adjusted"] == pytest.approx(2 * p)


def test_baseline_file_gates_like_the_run(pair, tmp_path):
    a, b = pair
    _drop(b, 0.12)
    base = tmp_path / "baseline.json"
    assert CliRunner().invoke(main, ["baseline", "export", str(a), "-o", str(base)]).exit_code == 0
    pol = "rules: ['rag.latency_p95_ms <= 800']\nmax_drop:\n  token_f1: 0.02\n"
    _, from_run = gate(tmp_path, b, pol, "--baseline", str(a))
    _, from_file = gate(tmp_path, b, pol, "--baseline", str(base))
    assert [(x["name"], x["passed"], x["p_value"]) for x in from_run["rules"]] == [
        (x["name"], x["passed"], x["p_value"]) for x in from_file["rules"]
    ]
    assert base.stat().st_size < 200_000


def test_junit_parsed_back(pair, tmp_path):
    a, b = pair
    _drop(b, 0.12)
    junit = tmp_path / "junit.xml"
    pol = "rules:\n  - rag.token_f1 >= 0.30\n  - rag.latency_p95_ms <= 100\nmax_drop:\n  token_f1: 0.02\n"
    r, _ = gate(tmp_path, b, pol, "--baseline", str(a), "--junit", str(junit))
    assert r.exit_code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "rag.token_f1 >= 0.30",
        "rag.latency_p95_ms <= 100",
        "rag.token_f1 max_drop 0.02",
        "qlora.token_f1 max_drop 0.02",
    ]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"rag.latency_p95_ms <= 100", "rag.token_f1 max_drop 0.02"}
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    assert "drop" in failed["rag.token_f1 max_drop 0.02"].get("message")


def test_junit_escapes_untrusted_text(tmp_path):
    from harness.gate.outputs import gate_junit

    res = {
        "run": {"name": "r<&>\x01"},
        "rules": [
            {
                "name": 'x"<script>',
                "strategy": "s&",
                "kind": "absolute",
                "passed": False,
                "evidence": "<b>\x00</b>",
            }
        ],
    }
    root = ET.parse(gate_junit(res, tmp_path / "j.xml")).getroot()
    case = root.find("testsuite/testcase")
    assert case.get("name") == 'x"<script>' and case.find("failure").get("message") == "<b>\ufffd</b>"


def test_markdown_and_terminal(pair, tmp_path):
    a, b = pair
    _drop(b, 0.12)
    r, _ = gate(tmp_path, b, "max_drop:\n  rag.token_f1: 0.02\n", "--baseline", str(a))
    assert "FAIL  rag.token_f1 max_drop 0.02" in r.output and "gate FAILED: 0 of 1 rules pass" in r.output
    md = (tmp_path / "gate-out" / "gate.md").read_text()
    assert md.startswith("## ❌ adaptbench gate") and "| ❌ | `rag.token_f1 max_drop 0.02` | worse |" in md


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("rules:\n  - rag.token_f1 >> 0.3\n", "rules[0].check"),
        ("rules: []\nmax_drops: {token_f1: 0.02}\n", "max_drops"),
        ("max_drop: {token_f1: -0.02}\n", "max_drop"),
        ("alpha: 2\nrules: ['rag.token_f1 >= 0.3']\n", "alpha"),
        ("rules:\n  - {check: rag.token_f1 >= 0.3, on: middle}\n", "rules[0].on"),
        ("rules: []\n", "no rules"),
        ("rules: ['nope.token_f1 >= 0.3']\n", "strategy 'nope'"),
        ("rules: ['rag.bogus >= 0.3']\n", "unknown measure"),
        ("max_drop: {token_f1: 0.02}\n", "--baseline"),
        ("max_drop: {latency_p95_ms: 10}\n", "use an absolute rule"),
    ],
)
def test_usage_errors_exit_2_with_one_line(pair, tmp_path, policy, message):
    a, b = pair
    extra = ("--baseline", str(a)) if "latency" in policy else ()
    r, _ = gate(tmp_path, b, policy, *extra)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_gate_refuses_a_mismatched_baseline(pair, tmp_path):
    a, b = pair
    scores = json.loads((b / "scores.json").read_text())
    del scores["strategies"]["rag"]["per_example"]["ex-001"]
    (b / "scores.json").write_text(json.dumps(scores))
    r, _ = gate(tmp_path, b, "max_drop: {rag.token_f1: 0.02}\n", "--baseline", str(a))
    assert r.exit_code == 2 and "example ids differ" in r.output
    r, data = gate(tmp_path, b, "max_drop: {rag.token_f1: 0.02}\n", "--baseline", str(a), "--allow-mismatch")
    assert r.exit_code == 0 and data["mismatches"]
