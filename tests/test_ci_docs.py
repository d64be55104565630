"""The shipped CI jobs parse and run the three-step recipe: run, gate, upload the report."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.gate.gate import load_policy

CI = Path(__file__).resolve().parents[1] / "docs" / "ci"


def _commands(steps: list) -> str:
    return "\n".join(str(s.get("run", "")) if isinstance(s, dict) else str(s) for s in steps)


def test_github_actions_runs_gates_and_uploads():
    wf = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = wf["jobs"]["gate"]["steps"]
    cmds = _commands(steps)
    assert "adaptbench run configs/demo.yaml" in cmds and "adaptbench gate" in cmds
    assert "--baseline baselines/demo.json" in cmds and "--policy docs/ci/gates.yaml" in cmds
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "report.html" in upload["with"]["path"]
    assert cmds.index("adaptbench run") < cmds.index("adaptbench gate")


def test_gitlab_job_runs_gates_and_uploads():
    job = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["adaptbench-gate"]
    cmds = "\n".join(job["script"])
    assert "adaptbench run configs/demo.yaml" in cmds and "adaptbench gate" in cmds
    assert cmds.index("adaptbench run") < cmds.index("adaptbench gate")
    assert "runs/ci/report.html" in job["artifacts"]["paths"] and job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "runs/ci/gate-junit.xml"


def test_shipped_policy_is_valid():
    policy = load_policy(CI / "gates.yaml")
    assert [r.on for r in policy.rules] == ["lower_bound", "point", "upper_bound"]
    assert policy.max_drop == {"token_f1": 0.02, "fact_recall": 0.02}
