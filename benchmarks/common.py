"""Helpers the benchmark scripts share: threads, machine description, busy-machine warning, tables, CSV.

Benchmarks are scripts, not tests: each prints a table, writes CSV (and Markdown) under
`benchmarks/results/`, and ends with one fixed summary line. Timings are only meaningful on an idle
machine, so every script warns (on stderr and in its output) when another heavy process runs.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from e2vpt.provenance import cpu_model, git_commit  # noqa: E402 - after the path is set


def set_threads(n: int) -> int:
    """`torch.set_num_threads(n)` (intra-op threads) and return what torch reports."""
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def machine_info(device: str = "cpu") -> dict:
    """What a timing depends on: CPU, cores, torch version, threads, device."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def other_heavy_processes(min_cpu_s: float = 30.0) -> list[str]:
    """Other processes of this machine that look heavy: the demo pretraining job, or any python
    process (not us, not our parent) that has used more than `min_cpu_s` CPU seconds recently."""
    found = []
    me = {os.getpid(), os.getppid()}
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in me:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, cpu_s = fields[0], (int(fields[11]) + int(fields[12])) / tick
        if "e2vpt.demo_backbone.pretrain" in cmd or "e2vpt pretrain" in cmd:
            found.append(f"pid {proc.name}: {cmd[:100]}")
        elif state == "R" and "python" in cmd and cpu_s > min_cpu_s:
            found.append(f"pid {proc.name} (running, {cpu_s:.0f} CPU s): {cmd[:100]}")
    return found


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over the next `seconds` (from /proc/stat), this process included."""
    import time

    def read():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields)

    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def busy_warning() -> str | None:
    """A one-line warning when the machine is not idle (timings would be meaningless), else None.

    Busy = another process uses more than a fifth of the machine over one second, or the demo
    pretraining job runs.
    """
    busy = cpu_busy_fraction(1.0)
    heavy = other_heavy_processes()
    if heavy or busy > 0.2:
        detail = "; ".join(heavy[:3]) if heavy else "no single culprit found"
        return (f"WARNING: machine not idle ({100 * busy:.0f}% of {os.cpu_count()} cores busy over 1 s; {detail}); "
                "timings are not comparable")
    return None


def met(ok: bool) -> str:
    """A goal's answer as every published table writes it."""
    return "met" if ok else "MISSED"


def fmt(value, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], file=None) -> None:
    """A table on stdout: rich when installed (and stdout is a terminal), plain aligned text otherwise."""
    rows = [[str(c) for c in r] for r in rows]
    file = file or sys.stdout
    try:
        if not file.isatty():
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
        print(f"\n{title}", file=file)
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)), file=file)
        print("  ".join("-" * w for w in widths), file=file)
        for r in rows:
            print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))), file=file)
        file.flush()
        return
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(str(c), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(file=file).print(table)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], fieldnames: Sequence[str] | None = None) -> None:
    """Write rows atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def append_csv_row(path: Path, row: dict, fieldnames: Sequence[str]) -> None:
    """Append one row (header first when the file is new) and flush it to disk: resumable logs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:  # an older file keeps its own columns; refuse to drop a value it has no column for
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        lost = [k for k in fieldnames if k not in header and row.get(k) not in (None, "")]
        if lost:
            raise ValueError(f"{path} has no column for {', '.join(lost)}; write to a new file")
        fieldnames = header
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# provenance: every published number says which code, which defaults and which machine produced it
README = REPO / "benchmarks" / "README.md"
# what benchmarks write (never "changes" to the code); evidence files under results/ are inputs and count
OUTPUTS = ("benchmarks/results/*.csv", "benchmarks/results/*.md", "benchmarks/results/*/**", "benchmarks/README.md")


def defaults_digest() -> str:
    """A short digest of today's default settings (`TrainConfig()`, bookkeeping left out): a result
    that used the defaults is stale once this differs from the digest it recorded."""
    import hashlib
    import json

    from e2vpt.config import NO_EFFECT_ON_RESULTS, TrainConfig

    values = {k: v for k, v in TrainConfig().to_dict().items() if k != "extra" and k not in NO_EFFECT_ON_RESULTS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance(device: str = "cpu") -> dict:
    """Columns every result row carries: the commit, the defaults' digest, the date and the machine."""
    import time

    return {"commit": git_commit(REPO, OUTPUTS) or "unknown", "defaults": defaults_digest(), "date": time.strftime("%Y-%m-%d"),
            **machine_info(device)}


def evidence_source(path: str | Path) -> dict:
    """Columns that tie a table computed from an evidence file (`e2vpt sweep export`) to that file: its
    path (relative to the repository when inside it) and sha256, which `stale.py` compares with the file."""
    from e2vpt.sweeps import evidence

    path = Path(path).resolve()
    evidence.read(path)  # bounded and checked before anything else reads it
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {"evidence": str(shown), "evidence_sha256": evidence.digest(path)}


@contextmanager
def opened_sweep(source: str | Path) -> Iterator:
    """The `SweepDir` of `source`: an evidence file, unpacked into a temporary folder for as long as the
    block runs, or a sweep folder read where it is."""
    from e2vpt.sweeps import SweepDir, evidence

    source = Path(source)
    if source.is_dir():
        yield SweepDir(source)
        return
    with tempfile.TemporaryDirectory(prefix="e2vpt-evidence-") as root:
        yield evidence.open_evidence(source, root)


def provenance_line(row: dict) -> str:
    """Which code, defaults and machine a result row came from, for a README block; rows written
    before results carried provenance say so (with whatever machine detail they did record)."""
    machine = row.get("cpu") or "an unrecorded CPU"
    if row.get("cores"):
        machine += f" ({row['cores']} cores)"
    if row.get("gpu"):
        machine += f", {row['gpu']}"
    if not row.get("commit"):
        date = row.get("date") or (row.get("time") or "")[:10]
        return (f"commit and defaults not recorded (measured before results carried them)"
                f"{', ' + date if date else ''}, {machine}")
    defaults = "defaults not used" if row.get("defaults_used") == "False" else f"defaults `{row['defaults']}`"
    return f"commit `{row['commit']}`, {defaults}, {row['date']}, {machine}"


def start_afresh_unless_current(path: Path) -> None:
    """An append-style result file keeps only rows recorded with today's defaults: rows from before
    results carried provenance, or from other defaults, are dropped (git keeps them), so that new rows
    never sit beside numbers the staleness check (benchmarks/stale.py) cannot vouch for."""
    rows = read_csv(path)
    current = [r for r in rows if r.get("defaults") == defaults_digest()]
    if len(current) == len(rows):
        return
    print(f"NOTE: dropped {len(rows) - len(current)} row(s) of {path.name} not recorded with today's defaults "
          "(git keeps the old file)", file=sys.stderr)
    if current:
        write_csv(path, current, list(rows[0]))
    else:
        path.unlink()


def evidence_table_main(doc: str, name: str, source: Path, table, render, conclude, label: str,
                        defaults_used: bool, argv: list[str] | None = None) -> int:
    """The command line the scripts that compute a table from a sweep share (defaults_choice,
    defaults_report, class_comparison): `SCRIPT [EVIDENCE_OR_SWEEP] [--out CSV]`, and its exit status.

    `table(sweep)` gives (rows, trials done, trials in all). Each row gets this computation's provenance,
    the evidence file's path and sha256 and the commits its trials were trained at; the published
    result file (`results/NAME.csv`) and README block `NAME` are written only from the published source
    `source`; another source prints its table, and writes a CSV only where `--out` says. Then
    `conclude(rows, done, total)` gives the closing lines, or None while the sweep cannot answer yet.
    Returns 0, 1 (`LABEL: not yet (...)`) or 2 when the source cannot be read (one line said why)."""
    import argparse

    from e2vpt.errors import RunDirError
    from e2vpt.sweeps import evidence

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("source", nargs="?", default=str(source), help="an evidence file or a sweep folder "
                   f"(default: {source.relative_to(REPO) if source.is_relative_to(REPO) else source})")
    p.add_argument("--out", default=None, help=f"CSV (default for the published source: results/{name}.csv)")
    args = p.parse_args(argv)
    published = Path(args.source).resolve() == source.resolve()
    stamp = {**provenance(), "defaults_used": defaults_used}
    try:
        if not Path(args.source).is_dir():
            stamp.update(evidence_source(args.source))
        with opened_sweep(args.source) as sweep:
            rows, done, total = table(sweep)
            trained = (evidence.opened_from(sweep) or {}).get("trained_at")
    except RunDirError as exc:
        print(f"{name}: {exc}")
        return 2
    stamp["trained_at"] = " ".join(trained or [])
    rows = [{**r, **stamp} for r in rows]
    out = Path(args.out) if args.out else RESULTS / f"{name}.csv" if published else None
    if out is not None:
        write_csv(out, rows)
        rows = read_csv(out)  # what render reads from the published file: strings
    else:
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
    print(render(rows), end="")
    if published and args.out is None and done == total:
        write_readme_block(name.replace("_", "-"), render(rows))
    conclusion = conclude(rows, done, total)
    if conclusion is None:
        print(f"{label}: not yet ({done} of {total} trials finished)")
        return 1
    print(conclusion)
    return 0


def evidence_footer(script: str, row: dict) -> str:
    """The last line of a table computed from a sweep: where its numbers come from and when."""
    source = (f"`{row['evidence']}` (sha256 `{row['evidence_sha256'][:12]}`)" if row.get("evidence")
              else "a sweep folder (no evidence file)")
    trained = (f"its trials trained at commit {', '.join(f'`{c}`' for c in row['trained_at'].split())}"
               if row.get("trained_at") else "its trials trained before runs recorded their commit")
    return (f"Computed by `python benchmarks/{script}` from {source}, {trained}; computed at commit "
            f"`{row.get('commit', 'unknown')}`, {row.get('date', '')}.")


def _readme_parts(name: str, readme: Path) -> tuple[str, str, str] | None:
    """(before, block, after) of the generated block `name`: the text between `<!-- generated: NAME -->`
    and `<!-- end: NAME -->`, the markers kept in before and after; None when the markers are missing."""
    text = readme.read_text()
    begin, end = f"<!-- generated: {name} -->\n", f"<!-- end: {name} -->"
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    block, tail = rest.split(end, 1)
    return head + begin, block, end + tail


def readme_block(name: str, readme: Path = README) -> str | None:
    """The generated block `name` of benchmarks/README.md, as it stands."""
    parts = _readme_parts(name, readme)
    return parts[1] if parts else None


def write_readme_block(name: str, block: str, readme: Path = README) -> None:
    """Replace the generated block `name` of benchmarks/README.md with `block` (the script's own table)."""
    parts = _readme_parts(name, readme)
    if parts is None:
        raise SystemExit(f"{readme} has no block '{name}' (markers <!-- generated: {name} --> ... <!-- end: {name} -->)")
    write_text(readme, parts[0] + block + parts[2])


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def jpeg_folder(root: str | Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375),
                seed: int = 0) -> Path:
    """A synthetic `imagefolder` of `images` JPEGs (`size` pixels, ImageNet-like 500x375 by default),
    `classes` class folders: smooth colour fields with a per-class tint and per-image noise, so they
    compress and decode like photographs rather than like flat colour. Written once (a `complete` file
    marks a finished folder) and reused."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    if (root / "complete").is_file():
        return root
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(images):
        label = i % classes
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.random((h // 25 + 1, w // 25 + 1, 3))
        field = np.kron(coarse, np.ones((25, 25, 1)))[:h, :w]
        tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256]) / 255.0
        pixels = 0.6 * field + 0.3 * tint + 0.1 * rng.random((h, w, 3))
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    (root / "complete").write_text("")
    return root
