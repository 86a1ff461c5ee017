"""The packages' layers: every import of ``opensir`` and ``opensir_operator`` goes down, never up.

The order is written once, here (docs/design.md explains it). A module may import from its own layer
and the layers below; ``opensir.engines`` and ``opensir.rl`` are one layer but must not import each
other; the operator stands beside the loop and shares only the spec and the store with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("opensir.errors", "opensir.retry", "opensir.files")),
    ("spec", ("opensir.spec", "opensir.serving", "opensir.crd", "opensir.reference")),
    ("store", ("opensir.storage", "opensir.layout", "opensir.checkpoint")),
    ("method", ("opensir.selfplay",)),
    ("seams", ("opensir.seams",)),
    ("models", ("opensir.models",)),
    ("engines and trainers", ("opensir.engines", "opensir.rl")),
    ("assembly", ("opensir.assembly",)),
    ("evaluation", ("opensir.evaluation",)),
    ("loop", ("opensir.loop",)),
    ("cli", ("opensir.cli",)),
)
"""Bottom first."""
APART = (("opensir.engines", "opensir.rl"),)
"""Packages of one layer that must not import each other."""
OPERATOR = "opensir_operator"
OPERATOR_MAY_IMPORT = ("foundations", "spec", "store")


def modules() -> dict[str, Path]:
    found = {"opensir": ROOT / "opensir" / "__init__.py"}
    for base, package in (("opensir", "opensir"), ("operator", OPERATOR)):
        for path in sorted((ROOT / base).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``path`` imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if candidate in known else node.module)
    return {n for n in names if n.split(".")[0] in ("opensir", OPERATOR)}


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules() if m != "opensir" and not m.startswith(OPERATOR) and layer_of(m) is None]
    assert not unplaced, f"modules without a layer (add them to LAYERS): {unplaced}"


def test_imports_only_go_down() -> None:
    known = modules()
    upward = []
    for module, path in known.items():
        if module == "opensir" or module.startswith(OPERATOR):
            continue
        own = layer_of(module)
        for target in imports(path, known):
            theirs = layer_of(target)
            if target.startswith(OPERATOR) or (theirs is not None and own is not None and theirs > own):
                upward.append(f"{module} ({LAYERS[own][0]}) imports {target}")
            for a, b in APART:
                for x, y in ((a, b), (b, a)):
                    if module.startswith(x + ".") and target.startswith(y):
                        upward.append(f"{module} imports {target}: {x} and {y} stay apart")
    assert not upward, "\n".join(upward)


def test_the_operator_shares_only_the_spec_and_the_store() -> None:
    known = modules()
    allowed = {index for index, (name, _) in enumerate(LAYERS) if name in OPERATOR_MAY_IMPORT}
    wrong = [
        f"{module} imports {target}"
        for module, path in known.items()
        if module.startswith(OPERATOR)
        for target in imports(path, known)
        if not target.startswith(OPERATOR) and layer_of(target) not in allowed
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    known = modules()
    graph = {m: {t for t in imports(p, known) if t in known and t != m} for m, p in known.items()}
    # A package's __init__ re-exports its own modules; a cycle through it is not one between files.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" -> ".join([*visiting[visiting.index(node) :], node]))
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)
    assert not cycles, "\n".join(cycles)
