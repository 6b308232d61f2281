"""Where runs and data live, honoured by the app, the CLI and notebooks alike:

- runs root: `$E2VPT_RUNS_ROOT`, else `./runs`;
- data root: `$E2VPT_DATA_ROOT`, else `./data`.

Everything a user names (a run id from the URL, a data folder, a weights file) is resolved and
checked to stay inside those roots (`inside`), so nothing outside them is read, listed or deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RunDirError

RUNS_ROOT_ENV = "E2VPT_RUNS_ROOT"
DATA_ROOT_ENV = "E2VPT_DATA_ROOT"


def runs_root() -> Path:
    """The folder every run lives in (created on first use)."""
    root = Path(os.environ.get(RUNS_ROOT_ENV) or "runs").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_argument(value: str) -> Path:
    """A run named on the command line: a folder path, or the id of a run under the runs root."""
    path = Path(value).expanduser()
    if not path.exists() and len(path.parts) == 1 and (runs_root() / value).is_dir():
        return runs_root() / value
    return path


def data_root() -> Path:
    """The folder user datasets and weights files must live in (not created: it may not exist)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data").expanduser().resolve()


def with_data_root(config):
    """`config` with its data paths made absolute the way every entry point reads them, for the CLI
    and notebooks (the app checks more strictly, see `launch.check_inputs`).

    A relative `data_root` or `weights` is taken under `$E2VPT_DATA_ROOT` when that is set (else under
    the current folder, as a shell user expects), and a torchvision dataset given no folder reads the
    data root itself. The run records the absolute paths, so a resume works from any folder.
    """
    from .data import canonical_name, list_datasets

    values = config.to_dict()
    base = Path(os.environ[DATA_ROOT_ENV]).expanduser() if os.environ.get(DATA_ROOT_ENV) else Path.cwd()
    for name in ("data_root", "weights"):
        if values[name]:
            path = Path(values[name]).expanduser()
            values[name] = str((path if path.is_absolute() else base / path).resolve())
    entry = {e["name"]: e for e in list_datasets()}.get(canonical_name(config.dataset))
    if not values["data_root"] and entry["kind"] == "torchvision":
        values["data_root"] = str(data_root())
    return type(config).from_dict(values)


def root_or_default(root: str | Path | None, default) -> Path:
    return default() if root is None else Path(root).expanduser().resolve()


def inside(path: str | Path, root: str | Path, what: str = "path") -> Path:
    """`path` resolved (symlinks followed; relative paths are taken relative to `root`); raises
    `RunDirError` if it leaves `root`."""
    root = Path(root).resolve()
    path = Path(path).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise RunDirError(f"{what} {str(path)!r} is outside {root}; only files under that folder can be used")
    return resolved


def data_folders(root: str | Path | None = None) -> list[str]:
    """Sub-folders of the data root (names relative to it), two levels deep, for a picker."""
    root = root_or_default(root, data_root)
    if not root.is_dir():
        return []
    def folders(path: Path) -> list[Path]:  # links are skipped: they could point outside the root
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))

    found = []
    for first in folders(root):
        found.append(first.name)
        found += [f"{first.name}/{second.name}" for second in folders(first)]
    return found[:500]
