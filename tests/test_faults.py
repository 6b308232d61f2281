"""Fault injection: every case gets a clear message and loses nothing (issue: reliability and security).

Each test is marked `fault`; tests/conftest.py counts them and prints
`faults: N tried, N survived, M runs corrupted` at the end of the session. A run counts as
corrupted when `assert_run_intact` finds an unreadable file in its directory.
"""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from e2vpt.config import TrainConfig
from e2vpt.data import load_splits
from e2vpt.errors import BackboneError, DataError, NumericsError, RunDirError, UserError
from e2vpt.training.checkpoints import read_checkpoints
from e2vpt.fileio import append_jsonl, atomic_write_json, read_jsonl
from e2vpt.runs import RunDir
from e2vpt import train
from e2vpt.uploads import safe_extract_zip

from small_data import digits_folder

import procs  # tests/procs.py: `python -m e2vpt` processes forked from a preloaded forkserver

pytestmark = pytest.mark.fault

# Real digit images, 240 of them (tests/small_data.py): these runs are killed, broken and resumed dozens of
# times and only need every code path, which three batches an epoch exercise as well as thirteen.
DIGITS = str(digits_folder())
DATA = dict(dataset="imagefolder", data_root=DIGITS)
DATA_CLI = ["--dataset", "imagefolder", "--data-root", DIGITS]
BASE = dict(backbone="demo", pretrained=False, method="e2vpt", epochs=2, retrain_epochs=2,
            prune_rounds=1, prompt_len=4, kv_len=2, seed=1, **DATA)
CLI_BASE = ["--backbone", "demo", "--no-pretrained", *DATA_CLI, "--method", "e2vpt", "--epochs", "2",
            "--retrain-epochs", "2", "--prune-rounds", "1", "--prompt-len", "4", "--kv-len", "2", "--seed", "1", "--quiet"]


def assert_run_intact(run_dir: Path, killed: bool = False) -> None:
    """Every JSON and safetensors file in the run parses: nothing half-written. A temp file is allowed
    only after a kill -9 (nothing can clean up after one; the next resume removes it)."""
    for path in Path(run_dir).iterdir():
        try:
            if path.name.endswith(".tmp"):
                if not killed:
                    raise AssertionError(f"temp file left behind: {path.name}")
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(str(path))
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"run corrupted: {path.name}: {exc}") from None


def wait_for(predicate, timeout=600.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    raise TimeoutError("condition not reached")


def status_of(run_dir):
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def kill_when(run_dir, predicate, cli=None):
    proc = procs.start("train", *(cli or CLI_BASE), "--run-dir", str(run_dir))
    try:
        wait_for(lambda: predicate(status_of(run_dir)) or proc.poll() is not None)
        assert proc.poll() is None, "the run finished before the kill point"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_kill_9_while_scoring_shows_interrupted_then_resumes_to_the_uninterrupted_result(tmp_path, fast_reference):
    """What a user sees after a kill (the app and `e2vpt runs` say interrupted), and that the resumed run
    loses no epoch and logs none twice. Kills at every write and at 20 moments are tested below."""
    run_dir = tmp_path / "run"
    kill_when(run_dir, lambda s: "scoring" in s.get("message", ""), FAST_CLI)
    assert_run_intact(run_dir)
    assert RunDir(run_dir).status()["state"] == "interrupted"  # what the app and `e2vpt runs` show
    listed = procs.run("runs", "--root", str(tmp_path))
    assert "interrupted" in listed.stdout
    result = procs.run("train", "--resume", str(run_dir), "--quiet", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_as_reference(run_dir, fast_reference)
    epochs = [(r["round"], r["epoch"]) for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [(0, 1), (1, 1)]  # no epoch lost, none logged twice
    assert_run_intact(run_dir)


def test_kill_9_mid_write_leaves_old_or_new_file_never_half(tmp_path):
    """SIGKILL a process in the middle of rewriting a multi-MB JSON file with `atomic_write_json`, at several
    moments inside a write: afterwards the file is always one whole value the writer wrote, never half of one.

    A child imports e2vpt once (seconds), says `ready` on stdout, then forks one writer per round. A writer
    rewrites the target in a loop, printing `start i` / `done i` around each write of a value that carries
    its own check (`n` == len(`pad`), `pad` is one letter chosen by `i`). Each round waits for a completed
    write, times it, then kills the writer during the next one: at a fraction of the measured write time,
    or a few milliseconds after the folder first changes (the moment bytes hit the disk, where a write in
    place would leave a truncated file). Only kills that land between `start` and `done` count; a moment
    is retried until one does.
    """
    import re
    import select

    child = r'''
import os, sys, time
sys.path.insert(0, sys.argv[1])
from e2vpt.fileio import atomic_write_json

target = sys.argv[2]


def say(line):
    os.write(1, (line + "\n").encode())  # one small write(2) per line: lines of two processes never interleave


def write_forever():
    say(f"writer {os.getpid()}")
    deadline = time.monotonic() + 60  # a writer never outlives a crashed test by long
    i = 0
    while time.monotonic() < deadline:
        i += 1
        n = 3_000_000 + 500_000 * (i % 4)
        pad = "abcdefghijklmnopqrstuvwxyz"[i % 26] * n
        say(f"start {i}")
        atomic_write_json(target, {"writer": os.getpid(), "i": i, "n": n, "pad": pad})
        say(f"done {i}")


say("ready")
for _ in iter(sys.stdin.readline, ""):
    pid = os.fork()
    if pid == 0:
        try:
            write_forever()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    say(f"reaped {pid}")
'''
    repo = Path(__file__).resolve().parents[1]
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "status.json"
    err_path = tmp_path / "child.stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", child, str(repo), str(target)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
    fd, pending = proc.stdout.fileno(), b""

    def next_line(timeout=60.0):
        """(arrival time, line) of the child's next stdout line."""
        nonlocal pending
        deadline = time.monotonic() + timeout
        while b"\n" not in pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"child silent; stderr: {err_path.read_text()[-2000:]}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"child exited early; stderr: {err_path.read_text()[-2000:]}")
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        return time.monotonic(), line.decode()

    def check_whole(writer, done, started):
        assert target.exists(), "the target vanished"
        text = target.read_text()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"half-written target ({len(text)} chars): {exc}") from None
        assert sorted(value) == ["i", "n", "pad", "writer"]
        # the last finished write, or the one in flight if the kill fell between its rename and `done`
        assert value["writer"] == writer and value["i"] in (done, started), (value["writer"], value["i"], done, started)
        letter = "abcdefghijklmnopqrstuvwxyz"[value["i"] % 26]
        assert value["n"] == len(value["pad"]) and value["pad"] == letter * value["n"], "value not self-consistent"
        stray = [p.name for p in folder.iterdir() if p != target]
        assert all(re.fullmatch(r"\.status\.json\..+\.tmp", name) for name in stray), stray

    def folder_state():
        try:
            return sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder))
        except FileNotFoundError:  # a temp file renamed away between listing and stat: a change too
            return None

    moments = ([("of the write time", fraction) for fraction in (0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85)]
               + [("s after the folder changed", delay) for delay in (0.0, 0.0005, 0.001, 0.002, 0.004)])
    kills, writer = [], None
    try:
        assert next_line()[1] == "ready"
        for moment, amount in moments:
            for _ in range(8):
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
                kind, pid = next_line()[1].split()
                assert kind == "writer"
                writer, started, done, began, took = int(pid), 0, 0, 0.0, None
                while True:  # wait for a completed write and time it, then for the next write to start
                    at, line = next_line()
                    kind, i = line.split()
                    if kind == "start":
                        started, began = int(i), at
                        if done:
                            break
                    else:
                        done, took = int(i), at - began
                if moment == "of the write time":
                    time.sleep(amount * took)
                else:
                    before, deadline = folder_state(), time.monotonic() + 10
                    while folder_state() == before and time.monotonic() < deadline:
                        pass
                    time.sleep(amount)
                os.kill(writer, signal.SIGKILL)
                while True:  # the lines it printed before dying, up to the fork server's `reaped`
                    kind, i = next_line()[1].split()
                    if kind == "reaped":
                        writer_pid, writer = writer, None
                        break
                    started, done = (int(i), done) if kind == "start" else (started, int(i))
                check_whole(writer_pid, done, started)
                kills.append((amount, moment, started > done))
                if started > done:  # died inside a write: this moment is covered
                    break
            else:
                raise AssertionError(f"no kill at {amount} {moment} landed inside a write: {kills}")
    finally:
        if writer is not None:  # a writer not yet reaped: never leave it rewriting files after a failure
            try:
                os.kill(writer, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()


def test_torn_metrics_line_is_ignored_and_next_append_starts_fresh(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "val_')  # crash mid-append
    assert read_jsonl(path) == [{"epoch": 1}]
    append_jsonl(path, {"epoch": 3})
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 3}]


@pytest.mark.slow
def test_nan_loss_stops_as_failed_with_step_and_hint_and_keeps_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        # an epoch is 3 training steps and 1 validation batch: call 6 is the second step of the second epoch
        return loss * float("nan") if calls["n"] == 6 else loss

    import e2vpt.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module.F, "cross_entropy", poisoned)
    with pytest.raises(NumericsError, match="lower --lr"):
        train(TrainConfig(**BASE), run_dir, quiet=True)
    status = RunDir(run_dir).status()
    assert status["state"] == "failed" and "step" in status["message"] and "lower --lr" in status["message"]
    _, checkpoint, problem = next(read_checkpoints(RunDir(run_dir)))
    assert problem is None and (checkpoint.phase, checkpoint.epochs_done) == (0, 1)  # the last good one survives
    assert_run_intact(run_dir)


def make_folder(root: Path, bad: dict[str, bytes | Image.Image]) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    for name, content in bad.items():
        if isinstance(content, Image.Image):
            content.save(root / "a" / name)
        else:
            (root / "a" / name).write_bytes(content)
    return root


GOOD_PNG = None


@pytest.mark.parametrize("case", ["zero-byte", "truncated", "not-an-image"])
def test_broken_images_are_reported_by_path(tmp_path, case):
    buffer = tmp_path / "ok.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer)
    content = {"zero-byte": b"", "truncated": buffer.read_bytes()[:40], "not-an-image": b"hello, not a png"}[case]
    root = make_folder(tmp_path / "data", {f"bad_{case}.png": content})
    with pytest.raises(DataError, match=f"bad_{case}.png"):
        splits = load_splits("imagefolder", root=str(root), img_size=16)
        for i in range(len(splits.train)):
            splits.train[i]


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_images_in_other_modes_load_as_rgb(tmp_path, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8))
    image = image.convert(mode) if mode != "I;16" else Image.fromarray(np.full((12, 12), 300, np.uint16))
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    root = make_folder(tmp_path / "data", {f"odd{suffix}": image})
    splits = load_splits("imagefolder", root=str(root), img_size=16)
    for ds in (splits.train, splits.val, splits.test):
        for i in range(len(ds)):
            x, _ = ds[i]
            assert x.shape == (3, 16, 16) and torch.isfinite(x).all()


def test_weights_of_another_architecture_are_refused(tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}, str(wrong))
    with pytest.raises(BackboneError, match="does not fit"):
        train(TrainConfig(**dict(BASE, weights=str(wrong))), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # nothing half-written


class Bomb:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pickle_bomb_is_refused_and_never_executed(tmp_path, suffix):
    marker = tmp_path / "pwned"
    bomb = tmp_path / f"weights{suffix}"
    bomb.write_bytes(pickle.dumps(Bomb(marker)))
    result = procs.run("train", *CLI_BASE, "--weights", str(bomb), "--run-dir", str(tmp_path / "run"), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("safetensors" in result.stderr) and not marker.exists()
    assert not (tmp_path / "run").exists()


def zip_with(path: Path, entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("entry", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "C:/evil.png"])
def test_zip_slip_archives_are_refused_whole(tmp_path, entry):
    archive = zip_with(tmp_path / "up.zip", {"ok/a.png": b"x", entry: b"x"})
    with pytest.raises(DataError, match="outside"):
        safe_extract_zip(archive, tmp_path / "data")
    assert not (tmp_path / "evil.png").exists() and list((tmp_path / "data").iterdir()) == []


def test_decompression_bomb_is_stopped(tmp_path):
    archive = zip_with(tmp_path / "bomb.zip", {"big.png": b"\0" * 50_000_000})
    with pytest.raises(DataError, match="bomb|expands"):
        safe_extract_zip(archive, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_archive_extracts_only_images_into_a_fresh_folder(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    archive = zip_with(tmp_path / "set.zip", {"cats/1.png": png.read_bytes(), "run.sh": b"rm -rf /", "notes.txt": b"hi"})
    first, skipped = safe_extract_zip(archive, tmp_path / "data")
    second, _ = safe_extract_zip(archive, tmp_path / "data")
    assert first != second and first.parent == (tmp_path / "data").resolve()
    assert sorted(p.name for p in first.rglob("*") if p.is_file()) == ["1.png"]
    assert len(skipped) == 2


@pytest.mark.slow
def test_second_trainer_on_the_same_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    proc = procs.start("train", *CLI_BASE, "--run-dir", str(run_dir))
    try:
        wait_for(lambda: status_of(run_dir).get("state") == "running")
        second = procs.run("train", "--resume", str(run_dir), "--quiet", timeout=120)
        assert second.returncode == 2 and "another process" in second.stderr
        again = procs.run("train", *CLI_BASE, "--run-dir", str(run_dir), timeout=120)
        assert again.returncode == 2 and "already holds a run" in again.stderr
    finally:
        proc.send_signal(signal.SIGTERM)  # Cancel: stops cleanly at the next step
        proc.wait(120)
    assert RunDir(run_dir).status()["state"] == "cancelled"
    assert_run_intact(run_dir)


@pytest.mark.parametrize("args,expected", [
    (["eval", "/nonexistent/run"], "not a run directory"),
    (["train", "--resume", "/nonexistent/run"], "no run to resume"),
])
def test_missing_run_directories_get_a_clear_message(args, expected):
    result = procs.run(*args, timeout=120)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_runs_at_once_each_in_its_own_directory(tmp_path):
    children = [subprocess.Popen([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--epochs", "1",
                                  "--prune-rounds", "0", "--run-dir", str(tmp_path / f"run{i}")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
                for i in range(2)]
    for proc in children:
        assert proc.wait(600) == 0, proc.stderr.read()[-2000:]
    for i in range(2):
        assert RunDir(tmp_path / f"run{i}").status()["state"] == "done"
        assert_run_intact(tmp_path / f"run{i}")


def test_symlink_entries_are_not_extracted(tmp_path):
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("cats/passwd.png")
        link.external_attr = (0o120777 << 16)  # a symbolic link entry
        zf.writestr(link, "/etc/passwd")
        zf.writestr("cats/real.png", png_bytes())
    target, skipped = safe_extract_zip(archive, tmp_path / "data")
    assert [p.name for p in target.rglob("*") if p.is_file()] == ["real.png"]
    assert not any(p.is_symlink() for p in target.rglob("*")) and "link" in skipped[0]


def png_bytes(size=(8, 8)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_archive_without_images_is_refused_and_leaves_nothing(tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("data/table.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="holds no image files.*readme.txt"):
        safe_extract_zip(archive, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_uploads_together_stay_under_their_quota(tmp_path):
    """Each archive is small, but together they would pass the uploads quota: the one that would is refused
    whole, and deleting an earlier upload frees its share."""
    import random

    data = tmp_path / "data"
    rng = random.Random(0)
    archives = []
    for i in range(3):
        archive = tmp_path / f"part{i}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"c/{i}.png", bytes(rng.getrandbits(8) for _ in range(40_000)))
        archives.append(archive)
    first, _ = safe_extract_zip(archives[0], data, max_uploads_bytes=100_000)
    second, _ = safe_extract_zip(archives[1], data, max_uploads_bytes=100_000)
    with pytest.raises(DataError, match="quota for uploads"):
        safe_extract_zip(archives[2], data, max_uploads_bytes=100_000)
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["part0", "part1"]
    import shutil

    shutil.rmtree(first)
    third, _ = safe_extract_zip(archives[2], data, max_uploads_bytes=100_000)
    assert (third / "c" / "2.png").stat().st_size == 40_000


# --------------------------------------------------------------------------------------------------
# 1. the checkpoint: one file, the previous one kept, a real kill -9 at the exact moments between writes
FAST = dict(BASE, epochs=1, retrain_epochs=1)
FAST_CLI = ["--backbone", "demo", "--no-pretrained", *DATA_CLI, "--method", "e2vpt", "--epochs", "1",
            "--retrain-epochs", "1", "--prune-rounds", "1", "--prompt-len", "4", "--kv-len", "2", "--seed", "1", "--quiet"]

# (file moved into place, which time, before/after): a fast run writes checkpoint 1 after the first
# epoch, 2 at the phase boundary, 3 after pruning, 4 after the retrain epoch, 5 at the end
WRITE_POINTS = {
    "new checkpoint written, nothing renamed yet": ("checkpoint.prev.safetensors", 1, "before"),
    "between the two renames, at a phase boundary": ("checkpoint.safetensors", 2, "before"),
    "between the two renames, right after pruning": ("checkpoint.safetensors", 3, "before"),
    "checkpoint in place, the round not yet recorded": ("checkpoint.safetensors", 4, "after"),
    "weights written, no summary yet": ("weights.safetensors", 1, "after"),
}


@pytest.fixture(scope="module")
def fast_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fast-ref") / "run"
    summary = train(TrainConfig(**FAST), run_dir, quiet=True)
    return summary, load_file(str(run_dir / "weights.safetensors")), epochs_logged(run_dir)


def epochs_logged(run_dir):
    return [(r["kind"], r["round"], r.get("epoch")) for r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


def kill_at_write(run_dir, name, nth, when, *args):
    """Train (or resume, with `args`) in a child that kill -9s itself at that write; returns its exit code."""
    args = args or (*FAST_CLI, "--run-dir", str(run_dir))
    return procs.run("train", *args, kill_at=(name, nth, when), timeout=600).returncode


def assert_same_as_reference(run_dir, reference):
    summary, weights, epochs = reference
    got = json.loads((run_dir / "summary.json").read_text())
    assert (got["test_acc"], got["val_acc"], got["tuned_params"]) == (summary["test_acc"], summary["val_acc"],
                                                                       summary["tuned_params"])
    saved = load_file(str(run_dir / "weights.safetensors"))
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in weights)
    assert epochs_logged(run_dir) == epochs  # no record lost, none twice
    assert_run_intact(run_dir)
    assert not list(run_dir.glob("checkpoint*"))  # a finished run keeps no checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("point", list(WRITE_POINTS))
def test_kill_9_between_writes_resumes_to_the_uninterrupted_result(tmp_path, fast_reference, point):
    run_dir = tmp_path / "run"
    assert kill_at_write(run_dir, *WRITE_POINTS[point]) == -signal.SIGKILL
    assert_run_intact(run_dir, killed=True)
    assert RunDir(run_dir).status()["state"] == "interrupted"
    result = procs.run("train", "--resume", str(run_dir), "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_as_reference(run_dir, fast_reference)


@pytest.mark.slow
def test_kill_9_after_the_summary_shows_done_and_is_not_trained_again(tmp_path, fast_reference):
    run_dir = tmp_path / "run"
    assert kill_at_write(run_dir, "summary.json", 1, "after") == -signal.SIGKILL
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # what the dead process left
    assert RunDir(run_dir).status()["state"] == "done"
    listed = procs.run("runs", "--root", str(tmp_path))
    assert "done" in listed.stdout and "interrupted" not in listed.stdout
    again = procs.run("train", "--resume", str(run_dir), "--quiet", timeout=300)
    assert again.returncode == 2 and "already finished" in again.stderr and "Traceback" not in again.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_acc"] == fast_reference[0]["test_acc"]


@pytest.fixture(scope="module")
def killed_after_pruning(tmp_path_factory):
    """A run killed right after the checkpoint that follows pruning: the newest checkpoint is mid-phase
    (pruned, scores pending), the previous one is the phase boundary before pruning."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    assert kill_at_write(run_dir, "checkpoint.safetensors", 3, "after") == -signal.SIGKILL
    return run_dir


def copy_run(source, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes, past the header
    path.write_bytes(bytes(data))


def refit_with_a_missing_tensor(path: Path) -> None:
    """A well-formed checkpoint whose model state is not this run's (as if copied from another run)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors.pop(next(k for k in tensors if k.startswith("model.")))
    from e2vpt.fileio import tensors_sha256

    metadata["sha256"] = tensors_sha256(tensors)
    save_file(tensors, str(path), metadata=metadata)


DAMAGES = {
    "truncated": truncate,
    "a tensor byte altered": flip_a_tensor_byte,
    "deleted (killed between the renames)": lambda path: path.unlink(),
    "from another model": refit_with_a_missing_tensor,
    "not safetensors at all": lambda path: path.write_bytes(b"\x00" * 100),
}


@pytest.mark.slow  # each trains a reference run and a killed one (about a minute)
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, killed_after_pruning,
                                                                    fast_reference, damage):
    run_dir = copy_run(killed_after_pruning, tmp_path)
    DAMAGES[damage](run_dir / "checkpoint.safetensors")
    train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert_same_as_reference(run_dir, fast_reference)
    if damage != "deleted (killed between the renames)":
        assert "checkpoint.safetensors skipped" in capfd.readouterr().err


@pytest.mark.slow
def test_with_no_usable_checkpoint_the_run_starts_again_and_says_so(tmp_path, capfd, killed_after_pruning,
                                                                    fast_reference):
    run_dir = copy_run(killed_after_pruning, tmp_path)
    truncate(run_dir / "checkpoint.safetensors")
    flip_a_tensor_byte(run_dir / "checkpoint.prev.safetensors")
    train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert "starting again from the first epoch" in capfd.readouterr().err
    assert_same_as_reference(run_dir, fast_reference)


@pytest.mark.slow
def test_a_damaged_init_file_is_rebuilt_from_the_seed(tmp_path, killed_after_pruning, fast_reference):
    run_dir = copy_run(killed_after_pruning, tmp_path)
    truncate(run_dir / "init.safetensors")
    train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert_same_as_reference(run_dir, fast_reference)


@pytest.mark.slow
def test_a_torn_checkpoint_pair_of_an_older_version_is_never_mixed(tmp_path, fast_reference):
    """Older versions wrote tensors, then checkpoint.json; killed between the two, the new mid-phase tensors
    sat beside the old phase-boundary description. Such a pair is refused, never trained from."""
    run_dir = tmp_path / "run"
    assert kill_at_write(run_dir, "checkpoint.safetensors", 1, "after") == -signal.SIGKILL  # after epoch 1
    checkpoint = run_dir / "checkpoint.safetensors"
    tensors = load_file(str(checkpoint))
    assert any(k.startswith("optim.") for k in tensors)
    save_file(tensors, str(checkpoint))  # the old layout: no description inside
    (run_dir / "checkpoint.json").write_text(json.dumps({
        "phase": 1, "epochs_done": 0, "best_val": None, "best_epoch": None, "rounds": [], "wall_s": 1.0,
        "units_done": 1, "pending": None}))
    assert read_checkpoints(RunDir(run_dir)).__next__()[2].endswith("are from different moments")
    train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert_same_as_reference(run_dir, fast_reference)
    assert not (run_dir / "checkpoint.json").exists()


# --------------------------------------------------------------------------------------------------
# 3. containment: nothing is read or written outside the roots, whatever links a folder holds
def image_tree(root: Path, classes=("a", "b"), n=6) -> Path:
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_class_folder_linked_outside_the_dataset_is_refused(tmp_path):
    dataset = image_tree(tmp_path / "data" / "pets")
    outside = image_tree(tmp_path / "private", classes=("secrets",))
    (dataset / "c").symlink_to(outside / "secrets")
    with pytest.raises(DataError, match="leads outside the dataset folder"):
        load_splits("imagefolder", root=str(dataset))


def test_an_image_linked_outside_the_dataset_is_refused(tmp_path):
    dataset = image_tree(tmp_path / "data" / "pets")
    outside = image_tree(tmp_path / "private", classes=("x",))
    (dataset / "a" / "stolen.png").symlink_to(outside / "x" / "0.png")
    with pytest.raises(DataError, match="stolen.png leads outside"):
        load_splits("imagefolder", root=str(dataset))


def test_links_inside_the_dataset_folder_still_work(tmp_path):
    dataset = image_tree(tmp_path / "pets", classes=("a",))
    image_tree(tmp_path / "pets" / ".store", classes=("b",))
    (dataset / "b").symlink_to(dataset / ".store" / "b")
    splits = load_splits("imagefolder", root=str(dataset))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12


def test_a_link_loop_is_refused_instead_of_multiplying_the_images(tmp_path):
    dataset = image_tree(tmp_path / "pets")
    (dataset / "a" / "again").symlink_to(dataset / "a")
    with pytest.raises(DataError, match="link loop"):
        load_splits("imagefolder", root=str(dataset))


@pytest.mark.parametrize("layout", ["vtab", "fgvc"])
def test_listed_paths_that_climb_out_of_the_dataset_are_refused(tmp_path, layout):
    dataset = image_tree(tmp_path / "task" / "images", classes=("train",), n=4).parent
    secret = image_tree(tmp_path / "private", classes=("x",), n=1) / "x" / "0.png"
    escape = "../private/x/0.png"
    if layout == "vtab":
        for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
            (dataset / name).write_text("images/train/0.png 0\nimages/train/1.png 1\n")
        (dataset / "test.txt").write_text(f"{escape} 0\nimages/train/2.png 1\n")
    else:
        (dataset / "train.json").write_text(json.dumps({"train/0.png": 0, "train/1.png": 1, "train/2.png": 1}))
        (dataset / "test.json").write_text(json.dumps({f"../{escape}": 0, "train/3.png": 1}))
    assert secret.is_file()
    with pytest.raises(DataError, match="leads outside the dataset folder"):
        load_splits(layout, root=str(dataset))


@pytest.fixture
def finished_run(tmp_path, fake_run):
    runs = tmp_path / "runs"
    runs.mkdir()
    return runs, fake_run(runs, "20260101-000000-e2vpt-digits")


@pytest.mark.parametrize("name", ["summary.json", "config.json", "pruning.json", "status.json"])
def test_a_run_file_that_links_outside_is_not_read(tmp_path, finished_run, name):
    from e2vpt.runs import list_runs

    runs, run_dir = finished_run
    outside = tmp_path / f"outside-{name}"
    outside.write_text((run_dir / name).read_text())
    (run_dir / name).unlink()
    (run_dir / name).symlink_to(outside)
    if name == "status.json":  # what the link says is never shown; the whole summary makes the run done
        outside.write_text(json.dumps({"state": "failed", "message": "read from outside", "progress": 0.1}))
    rows = {r["id"]: r for r in list_runs(runs)}
    row = rows["20260101-000000-e2vpt-digits"]
    if name == "status.json":
        assert row["state"] == "done" and "outside" not in row["message"]
    else:
        assert row["state"] == "unreadable" and name in row["message"] and "link" in row["message"]


def test_an_analysis_folder_linked_outside_is_never_written(tmp_path, finished_run):
    from e2vpt.analysis.embeddings import run_features

    _, run_dir = finished_run
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run_dir / "analysis").symlink_to(outside)
    with pytest.raises(RunDirError, match="analysis of .* is a link"):
        run_features(run_dir, frozen=True)
    assert list(outside.iterdir()) == []


@pytest.mark.slow
def test_a_metrics_file_linked_outside_is_not_appended_to(tmp_path, killed_after_pruning):
    run_dir = copy_run(killed_after_pruning, tmp_path)
    outside = tmp_path / "diary.txt"
    outside.write_text("my notes\n")
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(RunDirError, match="metrics.jsonl of run is a link"):
        train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert outside.read_text() == "my notes\n"


def test_a_run_folder_that_is_a_link_is_not_opened(tmp_path, finished_run):
    from e2vpt.runs import open_run

    runs, run_dir = finished_run
    (runs / "alias").symlink_to(run_dir)
    with pytest.raises(RunDirError, match="is a link"):
        open_run("alias", runs)


def test_an_edited_data_folder_is_checked_again_on_resume_and_analysis(tmp_path, monkeypatch, fake_run):
    from e2vpt import launch

    runs, data = tmp_path / "runs", tmp_path / "data"
    data.mkdir()
    outside = image_tree(tmp_path / "private")
    run_dir = fake_run(runs, "20260101-000000-e2vpt-mine", state="cancelled", summary=False)
    config = json.loads((run_dir / "config.json").read_text())
    config.update(dataset="imagefolder", data_root=str(outside))  # edited by hand after the run started
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="outside"):
        launch.resume_run(run_dir.name, runs, data=data)
    with pytest.raises(UserError, match="outside"):
        launch.check_run_data(RunDir(run_dir), data)
    assert RunDir(run_dir).status()["state"] == "cancelled"  # refused before anything changed


# --------------------------------------------------------------------------------------------------
# 4. a run folder is marked; a user's folder is never trained into, Delete removes only run files
def user_folder(path: Path) -> dict[str, bytes]:
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a photo")
    (path / "notes.txt").write_text("my notes")
    (path / "metrics.jsonl").write_text('{"my": "own metrics"}\n')
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_training_refuses_a_folder_that_is_not_a_run(tmp_path):
    before = user_folder(tmp_path / "mine")
    result = procs.run("train", *FAST_CLI, "--run-dir", str(tmp_path / "mine"), timeout=300)
    assert result.returncode == 2 and "not an e2vpt run" in result.stderr and "Traceback" not in result.stderr
    after = {str(p.relative_to(tmp_path / "mine")): p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    assert after == before
    with pytest.raises(RunDirError, match="not an e2vpt run"):
        train(TrainConfig(**FAST), tmp_path / "mine", quiet=True)


def test_an_empty_folder_becomes_a_marked_run(tmp_path):
    (tmp_path / "empty").mkdir()
    run = RunDir(tmp_path / "empty")
    run.prepare_new()
    assert run.marker_file.is_file() and run.is_run_folder()


def test_delete_keeps_the_users_files_in_a_run_folder(tmp_path, finished_run):
    from e2vpt import launch

    runs, run_dir = finished_run
    (run_dir / "notes.txt").write_text("keep me")
    (run_dir / "photos").mkdir()
    (run_dir / "photos" / "cat.jpg").write_bytes(b"cat")
    (run_dir / "round_0.safetensors").write_bytes(b"x")
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "features.safetensors").write_bytes(b"x")
    kept = launch.delete_run(run_dir.name, runs)
    assert kept == ["notes.txt", "photos"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt", "photos"]
    assert (run_dir / "photos" / "cat.jpg").read_bytes() == b"cat"


def test_delete_removes_a_link_never_what_it_points_to(tmp_path, finished_run):
    from e2vpt import launch

    runs, run_dir = finished_run
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.pdf").write_bytes(b"years of work")
    (run_dir / "analysis").symlink_to(precious)
    (run_dir / "train.log").symlink_to(precious / "thesis.pdf")
    assert launch.delete_run(run_dir.name, runs) == []
    assert not run_dir.exists() and (precious / "thesis.pdf").read_bytes() == b"years of work"


# --------------------------------------------------------------------------------------------------
# 5. a really full disk: a small tmpfs (mounting one needs root; skipped with the reason otherwise)
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a filler file until the filesystem refuses a single byte more."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(small_disk):
    from e2vpt.fileio import is_disk_full

    path = small_disk / "summary.json"
    atomic_write_json(path, {"old": True})
    fill(small_disk)
    with pytest.raises(OSError) as caught:
        atomic_write_json(path, {"old": False, "pad": "x" * 100_000})
    assert is_disk_full(caught.value)
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "summary.json"]


def test_safetensors_own_error_on_a_full_disk_is_recognised(small_disk):
    """safetensors' Rust writer raises its own error type, whose only sign of a full disk is its text."""
    from e2vpt.fileio import is_disk_full

    fill(small_disk)
    with pytest.raises(Exception) as caught:
        save_file({"w": torch.zeros(1 << 20)}, str(small_disk / "w.safetensors"))
    assert is_disk_full(caught.value), repr(caught.value)


@pytest.mark.slow
def test_a_disk_that_fills_during_training_fails_with_the_hint_then_resumes(small_disk, fast_reference):
    run_dir = small_disk / "run"
    proc = procs.start("train", *FAST_CLI, "--run-dir", str(run_dir), capture=True)
    try:
        wait_for(lambda: "val acc" in status_of(run_dir).get("message", "") or proc.poll() is not None)
        filler = fill(small_disk)
        proc.wait(300)
        err = proc.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert "disk is full" in err and f"--resume {run_dir}" in err and "Traceback" not in err
    assert_run_intact(run_dir)
    filler.unlink()
    train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
    assert_same_as_reference(run_dir, fast_reference)


# --------------------------------------------------------------------------------------------------
# 6. values that cannot be used, refused in one line before anything is allocated; SIGTERM anywhere
CONFIG_VALUES = {
    "epochs: '2'": ("epochs", "whole number"),
    "lr: abc": ("lr", "number"),
    "batch_size: 2.5": ("batch_size", "whole number"),
    "epochs: .inf": ("epochs", "whole number"),
    "warmup_epochs: .inf": ("warmup_epochs", "finite"),
    "lr: .nan": ("lr", "finite"),
    "seed: 1.0e+23": ("seed", "seed"),
    "prompt_len: 100000000000": ("prompt_len", "0 to 1024"),
    "prune_rounds: 1000000000000": ("prune_rounds", "0 to 100"),
    "prune_rounds: 12": ("prune_rounds", "only 9 round(s) can prune anything"),
    "prune_ratio: 0.0\nsegment_ratio: 0.0": ("prune_rounds", "only 0 round(s)"),
    "device: meta": ("device", "cuda:N"),
    "bogus_key: 1": ("bogus_key", "unknown"),
    "method: [e2vpt]": ("method", "method"),
}


@pytest.mark.parametrize("line", list(CONFIG_VALUES))
def test_an_impossible_config_value_is_refused_in_one_line(tmp_path, capsys, line):
    from e2vpt.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("backbone: demo\npretrained: false\ndataset: digits\n" + line + "\n")
    code = main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    field, words = CONFIG_VALUES[line]
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert field in err and words.lower() in err.lower(), err
    assert not (tmp_path / "run").exists()  # refused before a folder, a model or a dataset was made


def test_eval_of_a_truncated_weights_file_names_the_file(tmp_path, finished_run):
    runs, run_dir = finished_run
    (run_dir / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    truncate(run_dir / "weights.safetensors")
    result = procs.run("eval", str(run_dir), timeout=300)
    assert result.returncode == 2 and "weights.safetensors" in result.stderr and "Traceback" not in result.stderr


def sigterm_when(run_dir, predicate, args):
    proc = procs.start("train", *args, capture=True)
    try:
        wait_for(lambda: predicate(status_of(run_dir)) or proc.poll() is not None)
        assert proc.poll() is None, "the run ended before the signal"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        return proc.returncode, time.monotonic() - sent, proc.stderr
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow  # compared with a reference run
@pytest.mark.parametrize("phase", ["loading backbone and data", "scoring prompt importance"])
def test_sigterm_stops_a_run_in_any_phase_and_it_resumes(tmp_path, fast_reference, phase):
    run_dir = tmp_path / "run"
    code, _, err = sigterm_when(run_dir, lambda s: phase in s.get("message", ""),
                                [*FAST_CLI, "--run-dir", str(run_dir)])
    assert code == 3 and "cancelled" in err and "Traceback" not in err, err[-2000:]
    assert RunDir(run_dir).status()["state"] == "cancelled"
    assert_run_intact(run_dir)
    if phase.startswith("scoring"):
        train(TrainConfig(**FAST), run_dir, resume=True, quiet=True)
        assert_same_as_reference(run_dir, fast_reference)


# --------------------------------------------------------------------------------------------------
# 7. a status poll never makes a starting trainer think the run is taken
def test_status_polls_never_make_the_lock_look_taken(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").touch()
    poller = subprocess.Popen([sys.executable, "-c", "import sys\nfrom e2vpt.runs import RunDir\nrun = RunDir(sys.argv[1])\n"
                               "print('ready', flush=True)\nwhile True:\n    run.is_locked()", str(run_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert poller.stdout.readline().strip() == "ready"
        for _ in range(40):
            run = RunDir(run_dir)
            run.lock()  # a poll holding the lock for an instant must not refuse it
            run._lock_file.close()
        holder = RunDir(run_dir)
        holder.lock()
        with pytest.raises(RunDirError, match="another process"):
            RunDir(run_dir).lock()  # a real holder still is refused
        holder._lock_file.close()
    finally:
        poller.kill()
        poller.wait(10)
        poller.stdout.close()


# --------------------------------------------------------------------------------------------------
# kill -9 at 20 evenly spaced moments of one demo run, resuming after each: the same result
@pytest.mark.slow
def test_twenty_kills_of_a_demo_run_end_where_an_uninterrupted_run_ends(tmp_path):
    from e2vpt.config import preset

    config = preset("demo", **DATA)  # the demo's schedule: 4 epochs, 2 rounds of pruning and 4 retraining epochs
    reference = train(config, tmp_path / "reference", quiet=True)
    ref_weights = load_file(str(tmp_path / "reference" / "weights.safetensors"))
    config_file = tmp_path / "demo.json"
    config_file.write_text(json.dumps(config.to_dict()))
    run_dir = tmp_path / "run"
    units = config.epochs + config.rounds * (config.resolved_retrain_epochs + 1)

    def done_fraction(status):
        return status.get("progress", 0.0) + status.get("progress_in_epoch", 0.0) / units

    for i in range(1, 21):
        args = ["--resume", str(run_dir)] if run_dir.exists() else ["--config", str(config_file), "--run-dir", str(run_dir)]
        proc = procs.start("train", *args, "--quiet")
        try:
            wait_for(lambda: (status_of(run_dir).get("state") == "running" and status_of(run_dir).get("pid") == proc.pid
                              and done_fraction(status_of(run_dir)) >= i / 21) or proc.poll() is not None)
            assert proc.poll() is None, f"the run ended before kill {i}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert_run_intact(run_dir, killed=True)
    result = procs.run("train", "--resume", str(run_dir), "--quiet", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["test_acc"], summary["tuned_params"]) == (reference["test_acc"], reference["tuned_params"])
    weights = load_file(str(run_dir / "weights.safetensors"))
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    assert_run_intact(run_dir)


@pytest.mark.parametrize("fits_in_memory", [True, False], ids=["kept in memory", "decoded as read"])
def test_a_full_disk_under_the_image_cache_says_so_and_training_data_stay_usable(small_disk, tmp_path, monkeypatch,
                                                                                  fits_in_memory):
    from PIL import Image

    from e2vpt.data import decoded, load_splits

    root = tmp_path / "pics"
    for c in range(2):
        for i in range(6):
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.effect_noise((40, 30), 60 + 20 * c).convert("RGB").save(root / f"c{c}" / f"{i}.jpg")
    cache = small_disk / "cache"
    cache.mkdir()
    fill(small_disk)
    monkeypatch.setenv("E2VPT_CACHE_DIR", str(cache))
    monkeypatch.setattr(decoded, "_fits_in_memory", lambda nbytes: fits_in_memory)
    with pytest.warns(UserWarning, match="disk holding .* is full"):
        splits = load_splits("imagefolder", str(root), img_size=16, train_augment=True)
    assert list(cache.iterdir()) == []  # no temporary file left on the full disk
    if fits_in_memory:
        assert splits.train.decoded.where.startswith("memory (not saved: the disk holding")
    else:
        assert splits.train.decoded is None
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
