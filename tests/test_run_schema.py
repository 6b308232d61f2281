"""The run folder's records (`e2vpt/run_schema.py`): a trained run writes exactly the declared keys, the
tests' fake runs have the same, readers refuse a damaged record by naming it, and the docs table is the
declaration's."""

import json
import re
from pathlib import Path

import pytest

from e2vpt import RunDir, TrainConfig
from e2vpt import run_schema as schema
from e2vpt import train
from e2vpt.errors import RunDirError

ROOT = Path(__file__).resolve().parent.parent
ALWAYS = {record.file: {k.name for k in record.keys if k.always} for record in schema.RECORDS}
ALL = {record.file: set(record.names) for record in schema.RECORDS}


def keys_of(run_dir: Path) -> dict[str, list[set[str]]]:
    """Every record of a run folder, as the key sets each file (or kind of metrics line) holds."""
    found = {name: [set(json.loads((run_dir / name).read_text()))] for name in
             ("e2vpt-run.json", "status.json", "pruning.json", "summary.json") if (run_dir / name).is_file()}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    found["metrics.jsonl (epoch)"] = [set(r) for r in lines if r["kind"] == "epoch"]
    found["metrics.jsonl (prune)"] = [set(r) for r in lines if r["kind"] == "prune"]
    if "pruning.json" in found:
        found["pruning.json (rounds[])"] = [set(r) for r in json.loads((run_dir / "pruning.json").read_text())["rounds"]]
    return found


def assert_follows_schema(run_dir: Path, optional: dict[str, set[str]]) -> None:
    """Each record holds every key the schema always writes, the optional ones named, and nothing else."""
    found = keys_of(run_dir)
    assert set(found) == set(ALL), set(ALL) ^ set(found)
    for name, key_sets in found.items():
        assert key_sets, name
        for keys in key_sets:
            assert keys == ALWAYS[name] | optional.get(name, set()), (name, keys ^ (ALWAYS[name] | optional.get(name, set())))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("schema") / "run"
    config = TrainConfig(method="e2vpt", backbone="demo", dataset="digits", epochs=1, retrain_epochs=1,
                         prune_rounds=1, prompt_len=4, kv_len=2, audit_pruning=True, batch_size=64)
    train(config, run_dir, quiet=True)
    return run_dir


@pytest.mark.slow
def test_a_trained_run_writes_exactly_the_declared_keys(trained_run):
    assert_follows_schema(trained_run, optional={"summary.json": {"embeddings_s", "audit_s"}})
    assert RunDir(trained_run).summary()["embeddings_s"] > 0


def test_a_fake_run_of_the_tests_has_the_keys_of_a_real_one(tmp_path, fake_run):
    assert_follows_schema(fake_run(tmp_path, "fake"), optional={})


def test_a_writer_cannot_add_forget_or_mistype_a_key():
    good = dict(format=1, created="2026-01-01T00:00:00")
    assert list(schema.MARKER.make(**dict(reversed(good.items())))) == ["format", "created"]  # declared order
    with pytest.raises(ValueError, match="missing \\['created'\\]"):
        schema.MARKER.make(format=1)
    with pytest.raises(ValueError, match="unknown \\['host'\\]"):
        schema.MARKER.make(**good, host="x")
    with pytest.raises(ValueError, match="format is True, not int"):
        schema.MARKER.make(format=True, created="now")


@pytest.mark.fault
@pytest.mark.parametrize("file, edit, says", [
    ("summary.json", lambda r: r.update(test_acc="high"), "test_acc is 'high', not int or float"),
    ("summary.json", lambda r: r.pop("tuned_pct"), "it lacks tuned_pct"),
    ("pruning.json", lambda r: r["rounds"][0].update(kept_tokens=2.5), "kept_tokens is 2.5, not int"),
    ("pruning.json", lambda r: r.update(rounds={"0": {}}), "rounds is {'0': {}}, not list"),
])
def test_a_reader_names_the_damaged_record_and_key(tmp_path, fake_run, file, edit, says):
    """A record really altered on disk: reading it raises one line naming the file, the run and the key;
    the listing still shows the run (as unreadable), nothing is lost."""
    from e2vpt.runs import list_runs

    path = fake_run(tmp_path, "damaged")
    record = json.loads((path / file).read_text())
    edit(record)
    (path / file).write_text(json.dumps(record))
    run = RunDir(path)
    with pytest.raises(RunDirError) as error:
        run.summary() if file == "summary.json" else run.pruning()
    assert f"{file} of damaged" in str(error.value) and says in str(error.value)
    [row] = list_runs(tmp_path)
    assert (row["id"], row["state"]) == ("damaged", "unreadable") and says in row["message"]


def test_a_metrics_line_of_the_wrong_type_is_skipped_not_shown(tmp_path, fake_run):
    path = fake_run(tmp_path, "lines")
    lines = (path / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["val_acc"] = "0.9"
    (path / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    metrics = RunDir(path).metrics()
    assert len(metrics) == len(lines) - 1 and all(not isinstance(r["val_acc"], str) for r in metrics if "val_acc" in r)


def test_the_docs_table_is_the_declaration():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- generated: run records -->\n(.*?)<!-- end: run records -->", text, re.S)
    assert block and block.group(1) == schema.markdown(), \
        "docs/ARCHITECTURE.md's run records are stale: paste e2vpt.run_schema.markdown() between the markers"


def test_a_run_from_before_the_marker_is_still_a_run(tmp_path, fake_run):
    """Runs written before `e2vpt-run.json` existed: their config.json marks them, so they are listed,
    opened, and never trained over."""
    from e2vpt.runs import list_runs

    path = fake_run(tmp_path, "old")
    (path / "e2vpt-run.json").unlink()
    run = RunDir(path)
    assert run.is_run_folder() and [(r["id"], r["state"]) for r in list_runs(tmp_path)] == [("old", "done")]
    with pytest.raises(RunDirError, match="already holds a finished run"):
        run.prepare_new()
