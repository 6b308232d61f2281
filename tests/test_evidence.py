"""A sweep as one evidence file (e2vpt.sweeps.evidence): exported, opened back as an ordinary sweep folder
that tells the same numbers, bounded and checked before it is expanded, and the shipped evidence still what
today's defaults would train."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from e2vpt.cli import main
from e2vpt.errors import RunDirError
from e2vpt.sweeps import SweepDir, evidence, frontier
from test_sweeps import finished_sweep, set_rounds


def _verdicts(sweep: SweepDir) -> dict:
    return frontier.verdicts(frontier.summary(frontier.points(sweep)))


def test_an_exported_sweep_opens_back_with_the_same_trials_numbers_and_verdict(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path / "made", fake_run, seeds=(0, 1, 2))
    for trial, recorded in sweep.read()["trials"].items():
        if recorded["method"] == "e2vpt":
            set_rounds(sweep.path / trial, [(0.90, 0.95, 20_000), (0.91, 0.93, 9_000), (0.92, 0.92, 5_000)], 2)
    path = evidence.export(sweep, tmp_path / "S.evidence.json.gz")
    assert path.stat().st_size < 64 * 1024 and gzip.decompress(path.read_bytes())  # compressed, whole
    opened = evidence.open_evidence(path, tmp_path / "runs")
    assert opened.path == tmp_path / "runs" / "S"
    record = opened.read()
    assert record["evidence"]["sha256"] == evidence.digest(path) and record["evidence"]["exported_by"]["cores"]
    assert opened.state(record) == "done"
    assert _verdicts(opened) == _verdicts(sweep)
    assert opened.rows() == sweep.rows()
    for trial in record["trials"]:
        assert opened.trial_run(trial).config() == sweep.trial_run(trial).config()
        assert opened.trial_run(trial).metrics() == sweep.trial_run(trial).metrics()
    assert (opened.path / "leaderboard.csv").is_file()
    assert evidence.open_evidence(path, tmp_path / "runs").path == opened.path  # the same file: the same folder


def test_a_newer_version_of_the_same_evidence_replaces_the_copy_opened_from_the_older_one(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path / "made", fake_run)
    path = evidence.export(sweep, tmp_path / "S.evidence.json.gz")
    first = evidence.open_evidence(path, tmp_path / "runs")
    (first.path / "t000-linear-s0" / "note.txt").write_text("left by the older copy")
    _rewrite(path, lambda data: data["trials"]["t000-linear-s0"]["summary"].update(test_acc=0.5))
    again = evidence.open_evidence(path, tmp_path / "runs")
    assert again.path == first.path and not (again.path / "t000-linear-s0" / "note.txt").exists()
    assert again.trial_run("t000-linear-s0").summary()["test_acc"] == 0.5
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["S"]  # no staging or retired copy left


def test_opening_never_overwrites_a_sweep_that_was_not_opened_from_evidence(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path / "made", fake_run)
    path = evidence.export(sweep, tmp_path / "S.evidence.json.gz")
    mine = finished_sweep(tmp_path / "runs", fake_run)  # a sweep trained here, also called S
    before = mine.sweep_file.read_bytes()
    with pytest.raises(RunDirError, match="not opened from an evidence file"):
        evidence.open_evidence(path, tmp_path / "runs")
    assert mine.sweep_file.read_bytes() == before
    other = evidence.open_evidence(path, tmp_path / "runs", "S-copy")
    assert other.read()["evidence"]["file"] == "S.evidence.json.gz"


def _rewrite(path: Path, change) -> Path:
    data = json.loads(gzip.decompress(path.read_bytes()))
    change(data)
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return path


def test_a_hostile_or_damaged_file_is_one_line_and_writes_nothing(tmp_path, fake_run, monkeypatch):
    sweep = finished_sweep(tmp_path / "made", fake_run)
    good = evidence.export(sweep, tmp_path / "good.evidence.json.gz")
    root = tmp_path / "runs"

    def escaping(path):
        path.write_bytes(good.read_bytes())
        _rewrite(path, lambda data: data["trials"].update({"../../outside": next(iter(data["trials"].values()))}))

    def escaping_record(path):  # the sweep's own list of trials names a path out of the sweep
        path.write_bytes(good.read_bytes())
        _rewrite(path, lambda data: data["sweep"]["trials"].update({"../../outside": {"method": "linear"}}))

    def odd_status(path):
        path.write_bytes(good.read_bytes())
        _rewrite(path, lambda data: next(iter(data["trials"].values())).update(status="x"))

    cases = {
        "not gzip": (tmp_path / "plain.json.gz", lambda p: p.write_text("{}"), "not a gzip-compressed"),
        "escaping record": (tmp_path / "record.json.gz", escaping_record, "not a plain folder name"),
        "odd status": (tmp_path / "status.json.gz", odd_status, "not what an evidence file holds"),
        "deep nesting": (tmp_path / "deep.json.gz", lambda p: p.write_bytes(gzip.compress(b"[" * 200_000)),
                         "does not hold JSON"),
        "missing": (tmp_path / "nothing.json.gz", lambda p: None, "cannot be read"),
        "a pipe": (tmp_path / "pipe.json.gz", lambda p: os.mkfifo(p), "not a regular file"),
        "not evidence": (tmp_path / "other.json.gz", lambda p: p.write_bytes(gzip.compress(b'{"a": 1}')),
                         "not an e2vpt sweep evidence file"),
        "escaping trial": (tmp_path / "escape.json.gz", escaping, "its sweep does not list"),
        "truncated": (tmp_path / "cut.json.gz", lambda p: p.write_bytes(good.read_bytes()[:200]), "not a gzip"),
    }
    for name, (path, make, message) in cases.items():
        make(path)
        with pytest.raises(RunDirError, match=message):
            evidence.open_evidence(path, root)
        assert not (tmp_path / "outside").exists() and not (root.exists() and any(root.iterdir())), name
    monkeypatch.setattr(evidence, "MAX_JSON_BYTES", 1024 * 1024)  # the bound, on a file that expands past it
    bomb = tmp_path / "bomb.evidence.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (2 * 1024 * 1024) + good.read_bytes()))
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(RunDirError, match="expands past 1 MiB"):
        evidence.open_evidence(bomb, root)


def test_the_command_line_exports_a_sweep_and_opens_it_under_the_runs_root(tmp_path, fake_run, capsys):
    sweep = finished_sweep(tmp_path / "made", fake_run)
    out = tmp_path / "carried" / "cc.evidence.json.gz"
    assert main(["sweep", "export", str(sweep.path), "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main(["sweep", "open", str(out), "--root", str(tmp_path / "runs"), "--as", "from-a-colleague"]) == 0
    said = capsys.readouterr().out
    assert "opened" in said and "from-a-colleague" in said
    assert "note: 8 trial(s) ran with settings today's defaults no longer give" in said  # fakes: not the spec's
    assert SweepDir(tmp_path / "runs" / "from-a-colleague").exists()
    assert main(["sweep", "export", str(tmp_path / "nothing-here")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
    assert main(["sweep", "open", str(tmp_path / "nothing.evidence.json.gz")]) == 2
    assert "cannot be read" in capsys.readouterr().err  # one line, no traceback
    assert main(["sweep", "open", "class-comparison", "--root", str(tmp_path / "runs"), "--as", "for-class"]) == 0
    said = capsys.readouterr().out
    assert "for-class" in said and "digits: each method's final model" in said


def test_a_sweep_that_is_still_running_is_not_exported(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path / "made", fake_run)
    record = sweep.read()
    sweep.write(dict(record, state="running"))
    sweep.lock()
    try:
        with pytest.raises(RunDirError, match="is running"):
            evidence.export(sweep, tmp_path / "x.evidence.json.gz")
    finally:
        sweep.unlock()
    assert not (tmp_path / "x.evidence.json.gz").exists()


@pytest.mark.parametrize("name", list(evidence.SHIPPED))
def test_the_shipped_evidence_is_what_todays_defaults_would_train(name, tmp_path):
    """A default changed without rerunning the shipped comparisons fails here: rerun the sweep, export it."""
    path = evidence.SHIPPED_DIR / f"{name}{evidence.SUFFIX}"
    assert path.is_file(), f"{path} does not ship"
    data = evidence.read(path)
    assert evidence.stale_trials(data) == [], "rerun it: python -m e2vpt sweep ... then python -m e2vpt sweep export"
    assert all(files and files.get("summary") for files in data["trials"].values())  # every trial finished
    sweep = evidence.open_shipped(name, tmp_path)
    said = _verdicts(sweep)
    assert said and all("each method's final model" in text and "e2vpt minus vpt-deep" in text
                        for text in said.values())


def test_a_recorded_setting_that_differs_from_todays_default_is_named(tmp_path):
    path = tmp_path / "old.evidence.json.gz"
    path.write_bytes((evidence.SHIPPED_DIR / f"class-comparison{evidence.SUFFIX}").read_bytes())

    def older_default(data):
        first = next(iter(data["trials"].values()))
        first["config"]["retrain_epochs"] = 2  # as if it ran before the defaults changed to 4
    _rewrite(path, older_default)
    stale = evidence.stale_trials(evidence.read(path))
    assert len(stale) == 1 and "retrain_epochs 2 -> 4" in stale[0]
