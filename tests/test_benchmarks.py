"""The GPU check script (benchmarks/gpu_check.sh) is ready to run: its CPU dry run takes every step."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(*args: str, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GPU_CHECK_OUT": str(out), **(env or {})})


def test_without_a_gpu_the_check_says_so_in_one_line_and_writes_nothing(tmp_path):
    done = run_check(out=tmp_path / "out", env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_dry_run_takes_every_step_of_the_gpu_check_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    done = run_check("--dry-run", out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    for step in ("env", "step_cost", "demo", "gpu_epoch_compile_off", "gpu_epoch_compile_on"):
        assert any(line.startswith(f"gpu_check: {step} ok") for line in lines), (step, lines)
    assert lines[-1] == f"gpu check: 0 step(s) failed; results in {out}"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    with open(out / "step_cost.csv") as f:
        assert len(list(csv.DictReader(f))) >= 3
    for name, compiled in (("gpu_epoch_compile_off.csv", "False"), ("gpu_epoch_compile_on.csv", "True")):
        with open(out / name) as f:
            (row,) = list(csv.DictReader(f))
        assert row["compile"] == compiled and float(row["samples_per_s"]) > 0 and float(row["loader_img_per_s"]) > 0


# --------------------------------------------------------------------------------------------------
# published numbers: generated from result files that say which commit, defaults and machine made them
def _benchmarks():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    import stale

    return common, stale


def _blocks():
    common, stale = _benchmarks()
    return list(stale.BLOCKS)


@pytest.mark.parametrize("block", _blocks())
def test_each_published_table_is_what_its_script_renders_from_its_result_file(block):
    """A generated block of benchmarks/README.md is exactly its script's `render` of its result file, and
    a result that records provenance is current: made by committed code, with today's defaults where it
    used them, from the evidence file as it is now. Change a default, an evidence file or a table by hand
    and this fails."""
    import importlib

    common, stale = _benchmarks()
    script, result = stale.BLOCKS[block]
    rows = common.read_csv(common.RESULTS / result)
    assert common.readme_block(block) == importlib.import_module(script).render(rows)
    lines, found, known, _ = stale.check()
    assert not [line for line in lines if (line.startswith(result) or f"'{block}'" in line) and "STALE" in line], lines


def test_every_generated_block_of_the_readme_has_a_script_and_each_script_a_block():
    import re

    common, stale = _benchmarks()
    assert set(re.findall(r"^<!-- generated: (\S+) -->$", common.README.read_text(), re.M)) == set(stale.BLOCKS)


def test_the_tables_computed_from_evidence_files_record_it_and_ran_from_committed_code():
    common, stale = _benchmarks()
    for block in ("ablation", "defaults-choice", "defaults-report", "class-comparison"):
        rows = common.read_csv(common.RESULTS / stale.BLOCKS[block][1])
        assert rows and rows[0]["commit"] and not rows[0]["commit"].endswith("+changes"), block
        assert rows[0]["cpu"] and rows[0]["date"], block


@pytest.mark.parametrize("script", ["defaults_choice", "defaults_report", "class_comparison"])
def test_the_tables_of_sweeps_come_out_the_same_from_their_evidence_files(script):
    """The defaults search and report and the class comparison are kept as evidence files, not as raw
    trial folders: each table's rows are computed again here from its evidence file and equal the
    published result file's."""
    import importlib

    common, _ = _benchmarks()
    module = importlib.import_module(script)
    published = common.read_csv(common.RESULTS / f"{script}.csv")
    assert published[0]["evidence_sha256"] == common.evidence_source(module.SOURCE)["evidence_sha256"]
    with common.opened_sweep(module.SOURCE) as sweep:
        rows, done, total = module.table(sweep)
    assert done == total and len(rows) == len(published)
    for again, row in zip(rows, published):
        assert {k: str(v) for k, v in again.items()} == {k: row[k] for k in again}


def _isolated(stale, common, monkeypatch, tmp_path):
    """stale.py pointed at copies of every result file and of benchmarks/README.md."""
    import shutil

    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir(parents=True)
    for path in common.RESULTS.glob("*.csv"):
        shutil.copy(path, results / path.name)
    shutil.copy(common.README, readme)
    monkeypatch.setattr(stale, "RESULTS", results)
    monkeypatch.setattr(stale, "README", readme)
    return results, readme


def test_a_table_computed_from_an_evidence_file_is_stale_once_that_file_changes(tmp_path, monkeypatch):
    """Any change to the file's bytes counts; here a real one: one trial's test accuracy rewritten."""
    import gzip
    import shutil

    common, stale = _benchmarks()
    results, _ = _isolated(stale, common, monkeypatch, tmp_path)
    name = common.read_csv(results / "defaults_report.csv")[0]["evidence"]
    repo = tmp_path / "repo"
    for row_file in ("defaults_report.csv", "defaults_choice.csv", "class_comparison.csv"):
        source = repo / common.read_csv(results / row_file)[0]["evidence"]
        source.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(common.REPO / common.read_csv(results / row_file)[0]["evidence"], source)
    monkeypatch.setattr(stale, "REPO", repo)
    lines, found, _, _ = stale.check()
    assert found == 0, lines
    source = repo / name
    data = json.loads(gzip.decompress(source.read_bytes()))
    next(iter(data["trials"].values()))["summary"]["test_acc"] = 0.999
    source.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0))
    lines, found, _, _ = stale.check()
    assert found == 1 and any(line.startswith("defaults_report.csv: STALE") and "changed since" in line
                              for line in lines), lines


def test_the_staleness_check_sees_a_changed_default_an_uncommitted_run_and_an_edited_table(tmp_path, monkeypatch):
    common, stale = _benchmarks()
    results, readme = _isolated(stale, common, monkeypatch, tmp_path)
    lines, found, known, _ = stale.check()
    assert found == 0 and known >= 4, lines
    monkeypatch.setattr(stale, "defaults_digest", lambda: "a-new-default")  # a default changed since the run
    lines, found, _, _ = stale.check()
    assert any(line.startswith("ablation_demo.csv: STALE") for line in lines), lines
    assert not any(line.startswith("defaults_choice.csv: STALE") for line in lines), lines  # names its settings
    monkeypatch.undo()
    results, readme = _isolated(stale, common, monkeypatch, tmp_path / "again")
    rows = common.read_csv(results / "ablation_demo.csv")
    common.write_csv(results / "ablation_demo.csv", [{**r, "commit": r["commit"] + "+changes"} for r in rows])
    lines, found, _, _ = stale.check()
    assert "made by code no commit holds" in next(line for line in lines if line.startswith("ablation_demo")), lines
    common.write_csv(results / "ablation_demo.csv", rows)
    readme.write_text(readme.read_text().replace("| round 1 |", "| round 1 (edited by hand) |"))
    lines, found, _, _ = stale.check()
    assert found == 1 and any("README block 'ablation': STALE" in line for line in lines), lines
    readme.write_text(readme.read_text() + "\n<!-- generated: orphan -->\n<!-- end: orphan -->\n")
    lines, found, _, _ = stale.check()
    assert any("'orphan': STALE, no script is registered" in line for line in lines), lines


def test_a_result_names_its_commit_and_says_when_the_code_differed_from_it_but_not_its_own_outputs(tmp_path):
    """In a real git checkout: a tracked code file changed gives `+changes`; a benchmark's own outputs
    (its result file, the README block it rewrote) do not, so scripts run one after another stay clean."""
    from e2vpt.provenance import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t"})

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "r.csv").write_text("a\n1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    clean = git_commit(tmp_path, ("results/*.csv",))
    assert clean and len(clean) == 12
    (tmp_path / "results" / "r.csv").write_text("a\n2\n")
    assert git_commit(tmp_path, ("results/*.csv",)) == clean
    assert git_commit(tmp_path) == clean + "+changes"
    (tmp_path / "new_module.py").write_text("y = 1\n")  # untracked code a benchmark could import
    assert git_commit(tmp_path, ("results/*.csv",)) == clean + "+changes"
    (tmp_path / "new_module.py").unlink()
    (tmp_path / "results" / "input.evidence.json.gz").write_bytes(b"not an output")  # an input, not an output
    assert git_commit(tmp_path, ("results/*.csv",)) == clean + "+changes"
    (tmp_path / "results" / "input.evidence.json.gz").unlink()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ("results/*.csv",)) == clean + "+changes"
