"""Which code, which packages and which machine produced a result.

A run's summary and a sweep's evidence file carry this, so a number can always be traced to the commit
and the versions that made it, and a published number can be told apart from a stale one.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from ._version import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "ray")


def git_commit(repo: Path = PACKAGE_ROOT, outputs: tuple[str, ...] = ()) -> str | None:
    """The checkout's commit (12 hex digits), `+changes` when tracked files differ from it; None
    outside a git checkout (an installed package). With `outputs` (glob patterns relative to the
    repository: what a benchmark itself writes), changes there do not count, they are results, not
    code, and untracked files elsewhere do: a new module the benchmark imports is a change too."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if Path(git("rev-parse", "--show-toplevel") or "/nonexistent").resolve() != repo.resolve():
        return None  # an installed package inside someone else's repository (a .venv in a project)
    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return None
    changed = git("status", "--porcelain", "--untracked-files=all" if outputs else "--untracked-files=no", "--", ".",
                  *(f":(exclude,glob){p}" for p in outputs))
    return commit + ("+changes" if changed else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# the checkout when this module was first imported (the trainer imports it, so before any run starts): a
# later commit or edit does not change the code this process runs
LOADED_COMMIT = git_commit()


def environment() -> dict:
    """{e2vpt, commit, python, packages, platform, cpu, cores}: what a result depends on besides its
    settings; `commit` is `LOADED_COMMIT`."""
    return {"e2vpt": __version__, "commit": LOADED_COMMIT, "python": platform.python_version(),
            "packages": package_versions(), "platform": platform.platform(), "cpu": cpu_model(),
            "cores": os.cpu_count()}
