"""The import layers of docs/architecture.md hold: no module imports a higher layer (imports inside functions
included), and the solver imports no torch."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "mdp_cli"

# Rank of each module (dotted, without the "mdp_cli." prefix), by longest matching prefix.
RANKS = {
    "": 0,  # mdp_cli/__init__.py
    "errors": 0, "artifacts": 0, "settings": 0, "models": 0, "model_names": 0, "weights": 0, "data": 0,
    "solve": 0,  # independent of the model layers; see test_solver_imports_no_torch
    "report": 0,  # reads artifacts only (base and solve): no torch, no family; see test_report_imports_no_torch
    "modules": 1,
    "space": 2,
    "latency": 3,
    "importance": 4,
    "export": 5,
    "train": 6,
    "families": 6,
    "config": 7,
    "pipeline": 8, "refine": 8,
    "solve.cli": 9, "train.cli": 9, "report.cli": 9, "commands": 9, "cli": 9, "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rank(name: str) -> int:
    best = ""
    for prefix in RANKS:
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return RANKS[best]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, mdp_cli module) for every import of the package in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mdp_cli":
                out += [(node.lineno, alias.name) for alias in node.names]
            elif node.module.startswith("mdp_cli."):
                out.append((node.lineno, node.module.removeprefix("mdp_cli.")))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.removeprefix("mdp_cli.")) for a in node.names if a.name.startswith("mdp_cli.")]
    return out


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for line, target in imported_modules(path):
            if target == "__version__":
                continue
            if rank(target) > rank(me):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({me}, layer {rank(me)}) imports "
                                  f"{target} (layer {rank(target)})")
    assert not violations, "\n".join(violations)


def test_the_pipeline_and_cli_never_name_a_family():
    for name in ("pipeline.py", "commands/stages.py", "cli.py", "config.py"):
        text = (PACKAGE / name).read_text()
        for word in ("families.cnn", "families.vit", "space.cnn", "space.vit", "export.cnn", "export.vit",
                     "importance.taylor import bn_", "importance.vit", "is_vit", '== "vit"', '== "cnn"'):
            assert word not in text, f"mdp_cli/{name} names a family: {word!r}"


def test_solver_imports_no_torch():
    _no_torch_under("solve")


def test_report_imports_no_torch():
    _no_torch_under("report")


def _no_torch_under(package: str) -> None:
    for path in sorted((PACKAGE / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports torch"


def test_the_rule_catches_an_upward_import(tmp_path):
    # the checker itself: a function-level import of the pipeline, as space/ might write it, is found and ranked higher
    source = tmp_path / "fake.py"
    source.write_text("def f():\n    from mdp_cli.pipeline import discover\n    import mdp_cli.families.cnn\n")
    found = imported_modules(source)
    assert found == [(2, "pipeline"), (3, "families.cnn")]
    assert all(rank(target) > rank("space.cnn") for _, target in found)
