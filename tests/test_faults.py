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

from e2vpt import fileio as fileio_module
from e2vpt.config import TrainConfig
from e2vpt.data import load_splits
from e2vpt.errors import BackboneError, DataError, NumericsError, RunDirError, UserError
from e2vpt.fileio import append_jsonl, atomic_write_json, read_jsonl
from e2vpt.runs import RunDir
from e2vpt.trainer import Trainer, train
from e2vpt.uploads import safe_extract_zip

pytestmark = pytest.mark.fault

BASE = dict(backbone="demo", pretrained=False, dataset="digits", method="e2vpt", epochs=2, retrain_epochs=2,
            prune_rounds=1, prompt_len=4, kv_len=2, seed=1)
CLI_BASE = ["--backbone", "demo", "--no-pretrained", "--dataset", "digits", "--method", "e2vpt", "--epochs", "2",
            "--retrain-epochs", "2", "--prune-rounds", "1", "--prompt-len", "4", "--kv-len", "2", "--seed", "1", "--quiet"]


def assert_run_intact(run_dir: Path) -> None:
    """Every JSON and safetensors file in the run parses: nothing half-written."""
    for path in Path(run_dir).iterdir():
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(str(path))
            elif path.name.endswith(".tmp"):
                raise AssertionError(f"temp file left behind: {path.name}")
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    summary = train(TrainConfig(**BASE), run_dir, quiet=True)
    return summary, load_file(str(run_dir / "weights.safetensors"))


def kill_when(run_dir, predicate):
    proc = subprocess.Popen([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: predicate(status_of(run_dir)) or proc.poll() is not None)
        assert proc.poll() is None, "the run finished before the kill point"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


KILL_POINTS = {
    "mid-epoch (first phase, second epoch)": lambda s: "train round 0: epoch 2" in s.get("message", "")
    and s.get("progress_in_epoch", 0) >= 0.3,
    "mid-pruning (scoring importance)": lambda s: "scoring" in s.get("message", ""),
    "mid-epoch (retrain after pruning)": lambda s: "retrain round 1: epoch 2" in s.get("message", "")
    and s.get("progress_in_epoch", 0) >= 0.2,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, reference, point):
    run_dir = tmp_path / "run"
    kill_when(run_dir, KILL_POINTS[point])
    assert_run_intact(run_dir)
    assert RunDir(run_dir).status()["state"] == "interrupted"  # what the app and `e2vpt runs` show
    listed = subprocess.run([sys.executable, "-m", "e2vpt", "runs", "--root", str(tmp_path)], capture_output=True,
                            text=True)
    assert "interrupted" in listed.stdout
    result = subprocess.run([sys.executable, "-m", "e2vpt", "train", "--resume", str(run_dir), "--quiet"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary, ref_weights = reference
    assert summary["test_acc"] == ref_summary["test_acc"] and summary["val_acc"] == ref_summary["val_acc"]
    weights = load_file(str(run_dir / "weights.safetensors"))
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    epochs = [(r["round"], r["epoch"]) for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [(0, 1), (0, 2), (1, 1), (1, 2)]  # no epoch lost, none logged twice
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


def test_full_disk_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"old": True})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio_module.os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_json(path, {"old": False})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.slow
def test_full_disk_during_training_fails_with_a_hint_and_resumes(tmp_path, monkeypatch, reference):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    real = fileio_module.atomic_save_safetensors

    def fill_disk_on_third_checkpoint(path, *args, **kwargs):
        if Path(path).name == "checkpoint.safetensors":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    import e2vpt.checkpoints as checkpoints_module

    monkeypatch.setattr(checkpoints_module, "atomic_save_safetensors", fill_disk_on_third_checkpoint)
    with pytest.raises(UserError, match="disk is full"):
        train(TrainConfig(**BASE), run_dir, quiet=True)
    status = RunDir(run_dir).status()
    assert status["state"] == "failed" and "--resume" in status["message"]
    assert_run_intact(run_dir)
    monkeypatch.setattr(checkpoints_module, "atomic_save_safetensors", real)
    summary = train(TrainConfig(**BASE), run_dir, resume=True, quiet=True)
    assert summary["test_acc"] == reference[0]["test_acc"]


@pytest.mark.slow
def test_nan_loss_stops_as_failed_with_step_and_hint_and_keeps_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 20 else loss  # step 20: inside the second epoch

    import e2vpt.trainer as trainer_module

    monkeypatch.setattr(trainer_module.F, "cross_entropy", poisoned)
    with pytest.raises(NumericsError, match="lower --lr"):
        train(TrainConfig(**BASE), run_dir, quiet=True)
    status = RunDir(run_dir).status()
    assert status["state"] == "failed" and "step" in status["message"] and "lower --lr" in status["message"]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["epochs_done"] == 1  # the last good checkpoint survives
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
    result = subprocess.run([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--weights", str(bomb), "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
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
    proc = subprocess.Popen([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status_of(run_dir).get("state") == "running")
        second = subprocess.run([sys.executable, "-m", "e2vpt", "train", "--resume", str(run_dir), "--quiet"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "another process" in second.stderr
        again = subprocess.run([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--run-dir", str(run_dir)],
                               capture_output=True, text=True, timeout=120)
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
    result = subprocess.run([sys.executable, "-m", "e2vpt", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_runs_at_once_each_in_its_own_directory(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "e2vpt", "train", *CLI_BASE, "--epochs", "1",
                               "--prune-rounds", "0", "--run-dir", str(tmp_path / f"run{i}")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
             for i in range(2)]
    for proc in procs:
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
    target, skipped = safe_extract_zip(archive, tmp_path / "data")
    assert not any(p.is_symlink() or p.is_file() for p in target.rglob("*")) and "link" in skipped[0]
