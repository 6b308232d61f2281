"""The package as others see it: the public API, the command line's startup, the declared dependencies
and the architecture's import rules (issue 30)."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def pins(path: Path) -> dict[str, Requirement]:
    """The requirements a file lists (following `-r`), by canonical name."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            continue
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def declared(items: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, items)}


@pytest.mark.parametrize("pinned, ranges", [
    ("requirements.txt", PYPROJECT["project"]["dependencies"]),
    ("requirements-dev.txt", PYPROJECT["project"]["optional-dependencies"]["dev"]),
])
def test_pyproject_declares_what_the_requirements_pin(pinned, ranges):
    """Same packages (and extras) in both; every pinned version satisfies pyproject's range."""
    pinned, ranges = pins(ROOT / pinned), declared(ranges)
    assert sorted(pinned) == sorted(ranges)
    for name, pin in pinned.items():
        assert pin.extras == ranges[name].extras, name
        version = str(pin.specifier).removeprefix("==")
        assert ranges[name].specifier.contains(version, prereleases=True), (name, version, str(ranges[name]))


def test_the_version_is_written_once():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "e2vpt._version.__version__"}
    out = python("-c", "import e2vpt, e2vpt.provenance as p; print(e2vpt.__version__, p.__version__)")
    assert out.stdout.split() == ["0.1.0", "0.1.0"]


def test_the_public_api_is_importable_and_loads_torch_only_when_a_name_is_read():
    code = ("import sys, e2vpt\n"
            "light = 'torch' not in sys.modules\n"
            "from e2vpt import TrainConfig, train, load_run_model, RunDir, list_runs\n"
            "names = {n: getattr(e2vpt, n).__module__ for n in e2vpt.__all__ if n != '__version__'}\n"
            "print(light, train.__module__, sorted(names) == sorted(e2vpt.__all__[:-1]))\n"
            "getattr(e2vpt, 'no_such_name')\n")
    out = python("-c", code)
    assert out.stdout.split() == ["True", "e2vpt.workflow", "True"], out.stderr
    assert "AttributeError: module 'e2vpt' has no attribute 'no_such_name'" in out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--no-such-flag"], ["sweep", "--help"],
                                  ["pretrain", "--help"], ["runs", "--help"], ["sweep", "export", "--help"]])
def test_the_command_line_answers_without_importing_torch_or_timm(argv):
    """`python -X importtime` lists every module a command imported; help and argument errors need neither."""
    out = python("-X", "importtime", "-m", "e2vpt", *argv)
    assert out.returncode == (2 if "--no-such-flag" in argv else 0), out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "e2vpt.cli" in imported
    assert not imported & {"torch", "timm", "torchvision", "ray", "streamlit", "pandas"}, sorted(imported)[:20]


def test_the_notebooks_import_only_the_public_api():
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        deep = re.findall(r"^\s*(?:from|import) e2vpt\.\S+", code, flags=re.MULTILINE)
        assert not deep, (notebook.name, deep)
        assert re.search(r"^from e2vpt import ", code, flags=re.MULTILINE), notebook.name


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("lint-imports") or "lint-imports", "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                             "PYTHONPATH": str(root)})


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("e2vpt", "ui", "app_pages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_architecture_holds():
    out = lint_imports(ROOT)
    assert out.returncode == 0 and "4 kept, 0 broken" in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize("module, line, broken", [
    ("e2vpt/training/trainer.py", "from ..analysis import embeddings", "e2vpt.training is not allowed to import e2vpt.analysis"),
    ("e2vpt/models/base.py", "from .. import runs", "e2vpt.models is not allowed to import e2vpt.runs"),
    ("e2vpt/runs.py", "import streamlit", "e2vpt knows nothing of Streamlit BROKEN"),
    ("e2vpt/data/images.py", "from e2vpt.data import folders", "No import circles in e2vpt BROKEN"),
    ("ui/formats.py", "import app_pages.runs", "The app's pages use ui, ui uses e2vpt, never the other way BROKEN"),
])
def test_an_import_against_the_architecture_is_refused(tmp_path, module, line, broken):
    """A real violation written into a copy of the code: `lint-imports` (run by .ci/run) fails on it."""
    root = copy_of_the_code(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n\ndef _violation():\n    {line}\n")
    out = lint_imports(root)
    assert out.returncode != 0 and broken in out.stdout, out.stdout[-3000:]


def test_every_module_of_e2vpt_has_a_layer_and_at_most_500_lines():
    """A new module must say where it stands (pyproject.toml's layers); a module past 500 lines holds more
    than one concept and is split."""
    import pkgutil

    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c.get("containers") == ["e2vpt"])
    layered = {name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)}
    top = {m.name for m in pkgutil.iter_modules([str(ROOT / "e2vpt")])} - {"__main__"}
    assert top == layered, (sorted(top - layered), sorted(layered - top))
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "e2vpt").rglob("*.py")}
    assert not {p: n for p, n in lines.items() if n > 500}


def test_what_editors_see_of_the_public_api_is_what_it_loads():
    """`e2vpt/__init__.py` names each export twice (the lazy table, and the imports type checkers read):
    the two must agree, name for name and module for module."""
    import ast

    import e2vpt

    tree = ast.parse((ROOT / "e2vpt" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name: "e2vpt." + node.module for node in block.body for alias in node.names}
    assert seen == e2vpt._EXPORTS
