"""`opensir validate`, `opensir crd` and `--set`, run as a person would: a subprocess, exit codes, output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opensir.cli.common import load_with_overrides
from opensir.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
OPENSIR = str(Path(sys.executable).with_name("opensir"))


def opensir(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSIR, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def bad_band(tmp_path: Path) -> Path:
    document = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    document["spec"]["selfPlay"]["solveRate"] = {"lower": 0.9, "upper": 0.5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_validate_accepts_every_example():
    result = opensir("validate", *map(str, sorted((ROOT / "examples").glob("*.yaml"))))
    assert result.returncode == 0, result.stderr
    assert "valid SelfPlayRun default/tiny-cpu" in result.stdout


def test_validate_names_the_field_value_and_rule_without_a_traceback(bad_band: Path):
    result = opensir("validate", str(bad_band))
    assert result.returncode == 1
    assert "spec.selfPlay.solveRate.lower: must be less than upper (0.5) (got 0.9)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("spec: [unclosed", "is not valid YAML"),
        ("", "must hold exactly one YAML mapping"),
        ("a: 1\n---\nb: 2\n", "must hold exactly one YAML mapping"),
        ("apiVersion: opensir.io/v1alpha1\nkind: SelfPlayRun\n", "metadata: is required"),
    ],
)
def test_validate_explains_malformed_files(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "run.yaml"
    path.write_text(content)
    result = opensir("validate", str(path))
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_validate_missing_file(tmp_path: Path):
    result = opensir("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "cannot be read" in result.stderr


def test_crd_command_prints_the_committed_crd():
    result = opensir("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "selfplayrun.yaml").read_text()


def test_committed_spec_reference_is_current():
    result = opensir("reference")
    assert result.returncode == 0
    stale = "docs/spec.md is stale: run `opensir reference > docs/spec.md`"
    assert result.stdout == (ROOT / "docs" / "spec.md").read_text(), stale
    assert "| `selfPlay.solveRate.lower` | float | `0.5` | Lowest rewarded solve rate. |" in result.stdout


def test_run_help_lists_spec_fields_from_the_models():
    result = opensir("run", "--help")
    assert result.returncode == 0
    assert "selfPlay.solveRate.lower (float = 0.5)" in result.stdout
    assert "Lowest rewarded solve rate." in result.stdout


def test_set_overrides_apply_before_validation():
    tiny = ROOT / "examples" / "tiny-cpu.yaml"
    run = load_with_overrides(tiny, ["training.maxSteps=2", "training.saveEvery=1"])
    assert (run.spec.training.max_steps, run.spec.training.save_every) == (2, 1)
    with pytest.raises(SpecError) as caught:
        load_with_overrides(ROOT / "examples" / "tiny-cpu.yaml", ["selfPlay.solveRate.upper=0.1"])
    assert caught.value.problems[0][0] == "spec.selfPlay.solveRate.lower"
    with pytest.raises(SpecError, match="PATH=VALUE"):
        load_with_overrides(ROOT / "examples" / "tiny-cpu.yaml", ["training.maxSteps"])


def test_run_with_bad_spec_exits_before_loading_anything(bad_band: Path):
    result = opensir("run", str(bad_band))
    assert result.returncode == 2
    assert "spec.selfPlay.solveRate.lower" in result.stderr and "Traceback" not in result.stderr


def test_run_with_an_unknown_model_says_so_without_a_traceback(tmp_path: Path):
    result = opensir(
        "run",
        str(ROOT / "examples" / "tiny-cpu.yaml"),
        "--set",
        "model.name=builtin:no-such-model",
        "--set",
        f"storage.uri=file://{tmp_path}",
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "builtin:no-such-model" in result.stderr
    assert "smollm2-135m-instruct" in result.stderr  # the known builtins are listed
    assert "Traceback" not in result.stderr
