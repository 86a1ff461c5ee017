"""The chart's alerts under promtool: `promtool check rules` on the rendered PrometheusRule, and the unit
tests of tests/promtool/alerts_test.yml (each alert fires on a broken synthetic run, not on a healthy one).

promtool comes from the Debian prometheus package (scripts/install_prometheus.sh); like helm, a missing
binary fails the test instead of skipping it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_chart import CHART, NAMESPACE, RELEASE, helm

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = ROOT / "tests" / "promtool"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH: run scripts/install_prometheus.sh"
    return path


def rule_groups() -> list[dict]:
    """The rule groups of the PrometheusRule the chart renders (what the Prometheus Operator loads)."""
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--show-only",
        "templates/monitoring/prometheusrule.yaml",
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["spec"]["groups"]


def test_promtool_check_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@pytest.mark.parametrize("test_file", sorted(PROMTOOL_TESTS.glob("*_test.yml")), ids=lambda p: p.name)
def test_promtool_alert_unit_tests(tmp_path: Path, test_file: Path) -> None:
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # wording, not behaviour (see the test file's header)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(test_file, tmp_path / test_file.name)
    result = subprocess.run(
        [promtool(), "test", "rules", test_file.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_test() -> None:
    alerts = {rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    tested = set()
    for test_file in PROMTOOL_TESTS.glob("*_test.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            tested |= {check["alertname"] for check in case.get("alert_rule_test", [])}
    assert alerts == tested
