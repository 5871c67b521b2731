"""The codebase's own rules: every Python file of the project is linted and formatted."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_every_tracked_python_file_is_linted_and_formatted():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:  # not a git checkout (an sdist): nothing to compare with
        return
    shown = {
        str(Path(p).resolve().relative_to(ROOT))
        for p in ruff("check", "--show-files").stdout.split()
        if p.endswith(".py")
    }
    assert sorted(set(tracked) - shown) == []  # e.g. a folder named data/ excluded by mistake
    check = ruff("check", ".")
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = ruff("format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def imports_of(path: Path) -> set[str]:
    """Every cxrlab module a file imports (at any depth: lazy imports count too)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrlab"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cxrlab"))
    return out


def test_evaluation_and_inference_never_import_training():
    """serve.py and predict.py load the model's tree, not the trainer's (docs/architecture.md)."""
    src = ROOT / "src" / "cxrlab"
    rooms = [*(src / "evaluation").glob("*.py"), *(src / "inference").glob("*.py"),
             src / "export.py", src / "checkpoints.py", *(src / "models").glob("*.py")]  # fmt: skip
    for path in rooms:
        assert "cxrlab.training" not in imports_of(path), path.relative_to(ROOT)


def test_no_logger_class_is_named_outside_the_loggers_room():
    src = ROOT / "src" / "cxrlab"
    names = ("WandbLogger", "MLFlowLogger", "TensorBoardLogger", "CSVLogger", "import wandb")
    for path in src.rglob("*.py"):
        if path.name == "loggers.py":
            continue
        text = path.read_text()
        assert not [n for n in names if n in text], path.relative_to(ROOT)


def test_benchmark_tables_are_the_measured_figures(tmp_path, monkeypatch):
    """docs/benchmarks.md's generated tables equal what benchmarks/tables.py makes of the JSON
    results in benchmarks/results/; a changed result changes the table."""
    import json
    import shutil

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = tables.DOC.read_text()
    names = [m["name"] for m in tables.BLOCK.finditer(text)]
    assert {"data", "train", "memory", "cache_build"} <= set(names)
    assert tables.main(["--check"]) == 0, "run: python benchmarks/tables.py"
    # the figures come from the JSON: change one and the table changes with it
    results = tmp_path / "results"
    shutil.copytree(tables.RESULTS, results)
    data = json.loads((results / "data.json").read_text())
    data["ratio"] = 123.4
    (results / "data.json").write_text(json.dumps(data))
    monkeypatch.setattr(tables, "RESULTS", results)
    assert "**123.4x**" in tables.render(text) and "**123.4x**" not in text
