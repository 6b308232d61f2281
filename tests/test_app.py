"""The app, page by page (Streamlit's AppTest), and the launcher and charts it is built on.

What must hold: every page opens with and without runs, for a run that is done, still running,
failed or deleted while open, without an exception; bad input (an impossible setting, a data folder
that does not exist, Start pressed twice) gives a clear message and creates or loses no run;
nothing outside the runs and data roots is read, listed or deleted; training runs in its own
process that Cancel stops cleanly and Resume continues. One real (tiny) run for the whole file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from e2vpt import charts, launch
from e2vpt import runs as run_store
from e2vpt.config import TrainConfig
from e2vpt.errors import RunDirError, UserError
from e2vpt.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGES = ["app_pages/train.py", "app_pages/runs.py", "app_pages/prompts.py", "app_pages/pruning.py", "app_pages/embeddings.py",
         "app_pages/compare.py", "app_pages/sweeps.py"]
TIMEOUT = 300  # the first script run imports torch and timm; this machine may be busy


def open_page(page: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if run is not None:
        at.query_params["run"] = run
    at.run()
    if page != "app_pages/train.py":
        at.switch_page(page)
        at.run()
    return at


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def charts_on(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def submit(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Start training").click().run()


# --------------------------------------------------------------------------------------------------
# pages without runs, with fake runs, in every state
@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_without_runs(roots, page):
    at = open_page(page)
    no_exception(at)
    assert at.title[0].value == page.split("/")[1][:-3].capitalize()
    if page == "app_pages/train.py":
        assert any(b.label == "Start training" for b in at.button)
        assert at.selectbox(key="cfg_backbone").value == "demo"
        assert at.selectbox(key="cfg_dataset").value == "digits"
        assert at.selectbox(key="cfg_method").value == "e2vpt"
    elif page in ("app_pages/prompts.py", "app_pages/pruning.py", "app_pages/embeddings.py"):
        assert "No run picked" in texts(at, "info")
    else:
        assert "No" in texts(at, "info")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_for_a_finished_run(roots, fake_run, page):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits")
    fake_run(runs, "20260101-000001-linear-digits", method="linear", test_acc=0.6, tuned_params=650)
    at = open_page(page, run="20260101-000000-e2vpt-digits")
    no_exception(at)
    assert not at.error, texts(at, "error")
    expected = {"app_pages/train.py": 1, "app_pages/prompts.py": 2, "app_pages/pruning.py": 3, "app_pages/compare.py": 1,
                "app_pages/sweeps.py": 0}
    if page in expected:
        assert charts_on(at) == expected[page]
    if page == "app_pages/runs.py":
        assert len(at.dataframe[0].value) == 2
    if page == "app_pages/embeddings.py":  # a fake run has no weights: nothing to embed, said plainly
        assert "no final weights" in texts(at, "info")
    if page == "app_pages/train.py":
        assert any(m.label == "Test accuracy" for m in at.metric)


def test_the_newest_run_is_current_when_the_url_names_none(roots, fake_run):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/pruning.py")
    no_exception(at)
    assert at.query_params["run"] == "20260101-000000-e2vpt-digits"
    assert charts_on(at) == 3


@pytest.mark.parametrize("page", ["app_pages/prompts.py", "app_pages/compare.py"])
def test_a_page_url_on_a_fresh_server_still_runs_inside_the_frame(roots, fake_run, page):
    """A refresh of /prompts?run=... right after a server start: the page gets the sidebar and its run."""
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = "20260101-000000-e2vpt-digits"
    at.switch_page(page)
    at.run()
    no_exception(at)
    assert [s.label for s in at.sidebar.selectbox] == ["Current run"]
    assert at.sidebar.selectbox[0].value == "20260101-000000-e2vpt-digits"
    assert charts_on(at) >= 1


@pytest.mark.parametrize("page", PAGES)
def test_a_running_run_shows_what_exists_so_far(roots, fake_run, page):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits", state="running", summary=False)
    at = open_page(page, run="20260101-000000-e2vpt-digits")
    no_exception(at)
    if page in ("app_pages/prompts.py", "app_pages/pruning.py", "app_pages/embeddings.py"):
        assert "running" in texts(at, "info")
    if page == "app_pages/train.py":  # live: progress, the curves so far and a Cancel button
        assert any(b.label == "Cancel run" for b in at.button)
        assert charts_on(at) == 1


@pytest.mark.parametrize("page", PAGES)
def test_a_failed_run_says_so_and_shows_what_it_wrote(roots, fake_run, page):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits", state="failed", pruning=False, summary=False)
    at = open_page(page, run="20260101-000000-e2vpt-digits")
    no_exception(at)
    if page in ("app_pages/prompts.py", "app_pages/pruning.py"):
        errors = texts(at, "error")
        assert "failed" in errors and "no pruning record yet" in errors
    if page == "app_pages/train.py":  # the trainer's advice, in the form's words
        assert "lower “Learning rate”" in texts(at, "error") and "--lr" not in texts(at, "error")
        assert any(b.label == "Resume" for b in at.button)
        assert charts_on(at) == 1  # the curves it wrote before failing


def test_a_run_deleted_while_open_gives_a_clear_message(roots, fake_run):
    runs, _ = roots
    path = fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/prompts.py", run=path.name)
    assert charts_on(at) == 2
    import shutil

    shutil.rmtree(path)
    at.run()
    no_exception(at)
    assert "no longer exists" in texts(at, "warning")
    assert charts_on(at) == 0


@pytest.mark.parametrize("recipe, words, name", [
    ("studio", "sum, over the token's surviving segments r", "sum of its segments' mean |dL/dmask|"),
    ("paper", "mean size of the gradient of the loss with respect to the token's own mask", "mean |dL/dmask|"),
    ("official", "mean signed gradient of the loss with respect to the token's own mask", "mean dL/dmask, signed")])
def test_the_prompts_page_names_the_score_each_recipe_pruned_by(roots, fake_run, recipe, words, name):
    from e2vpt.config import RECIPES

    runs, _ = roots
    path = fake_run(runs, f"20260101-000000-e2vpt-{recipe}")
    config = json.loads((path / "config.json").read_text())
    resolved = TrainConfig.from_dict({k: v for k, v in config.items() if k not in RECIPES[recipe]} | {"recipe": recipe})
    (path / "config.json").write_text(json.dumps(resolved.to_dict()))
    at = open_page("app_pages/prompts.py", run=path.name)
    no_exception(at)
    page = texts(at, "markdown")
    assert words in page and f"recipe `{recipe}`" in page, page
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)  # its hover names the same score
    assert any(f"score: {name})" in trace.get("hovertemplate", "") for trace in heatmap["data"])
    assert ("lowest are pruned first" in page) == (recipe == "official")


def test_the_train_page_prices_the_next_run_from_epochs_measured_here(roots, fake_run):
    from e2vpt.training.estimates import priced_epochs

    runs, _ = roots
    at = open_page("app_pages/train.py")
    assert "No estimate yet: no finished demo run on digits here yet" in texts(at, "caption")
    fake_run(runs, "20260101-000000-e2vpt-digits")  # every epoch took 1.0 s
    at = open_page("app_pages/train.py")
    epochs = priced_epochs(TrainConfig())
    assert f"({epochs} epochs at 1.0 s, the median epoch of earlier demo runs on digits (e2vpt) here)" \
        in texts(at, "caption")


@pytest.mark.parametrize("bad", ["../../etc", "..", "/etc/passwd", "a/b", "nope"])
def test_a_bad_run_id_in_the_url_reads_nothing_and_explains(roots, fake_run, bad):
    runs, _ = roots
    good = fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/pruning.py", run=bad)
    no_exception(at)
    warning = texts(at, "warning")
    assert "There is no run" in warning and "check the address" in warning  # a typo, not a deletion
    assert "no longer exists" not in warning and "run" not in at.query_params  # the address is cleaned
    at.selectbox(key="run_picker").set_value(good.name).run()  # and the picker is free to pick a run
    no_exception(at)
    assert at.query_params["run"] == good.name and "There is no run" not in texts(at, "warning")
    assert charts_on(at) == 3


# --------------------------------------------------------------------------------------------------
# bad input on Train: no run created, a clear message
def test_the_form_shows_only_the_settings_the_method_uses(roots):
    at = open_page("app_pages/train.py")
    keys = lambda: {w.key for kind in ("number_input", "slider", "checkbox", "selectbox", "radio")  # noqa: E731
                    for w in getattr(at, kind)}
    assert {"cfg_prompt_len", "cfg_kv_len", "cfg_prune_ratio"} <= keys()  # e2vpt, the default, uses them all
    at.selectbox(key="cfg_method").set_value("vpt-deep").run()
    assert "cfg_prompt_len" in keys() and not {"cfg_kv_len", "cfg_prune_ratio", "cfg_prune_rounds"} & keys()
    assert "does not use" in texts(at, "caption")
    at.selectbox(key="cfg_method").set_value("linear").run()
    assert not {"cfg_prompt_len", "cfg_kv_len", "cfg_prune_ratio"} & keys()
    at.selectbox(key="cfg_method").set_value("e2vpt").run()  # hidden values come back as they were
    assert at.number_input(key="cfg_kv_len").value == TrainConfig().kv_len


def test_a_run_in_training_comes_before_the_form(roots, fake_run):
    runs, _ = roots
    path = fake_run(runs, "20260101-000000-e2vpt-digits", state="running", summary=False)
    RunDir(path).write_status("running", 0.27, "train round 0: epoch 1/2", progress_in_epoch=0.54, remaining_s=130.0)
    at = open_page("app_pages/train.py", run="20260101-000000-e2vpt-digits")
    no_exception(at)
    bar = at.get("progress")[0].proto
    assert bar.value == 27 and "54% of this epoch" in bar.text and "about 2 min left" in bar.text
    heads = [h.value for h in at.subheader]
    assert heads[:2] == ["Run `20260101-000000-e2vpt-digits`", "Start another run"]
    labels = [b.label for b in at.button]
    assert labels.index("Cancel run") < labels.index("Start training")


def test_a_run_started_here_stays_above_the_form_when_it_ends(roots, fake_spawn, fake_run):
    """A live class: the result of the run just started must not drop below the fold when it finishes."""
    runs, _ = roots
    at = open_page("app_pages/train.py")
    at.checkbox(key="cfg_pretrained").set_value(False)
    submit(at)
    (started,) = list(runs.iterdir())
    for process, _ in fake_spawn:
        process.kill()
        process.wait()
    import shutil

    shutil.rmtree(started)
    fake_run(runs, started.name)  # the same run, finished
    at.run()
    no_exception(at)
    heads = [h.value for h in at.subheader]
    assert heads[:2] == [f"Run `{started.name}`", "Start another run"]
    assert "Test accuracy" in [m.label for m in at.metric]
    at = open_page("app_pages/train.py", run=started.name)  # opened later, in a new session: the form first
    assert "Start another run" not in [h.value for h in at.subheader]


def test_compare_opens_on_the_current_runs_dataset_and_says_why_an_unfinished_run_is_missing(roots, fake_run):
    runs, _ = roots
    fake_run(runs, "20260101-000000-linear-digits", method="linear")
    fake_run(runs, "20260102-000000-e2vpt-dsprites-loc", dataset="dsprites-loc")
    fake_run(runs, "20260103-000000-e2vpt-digits", state="running", summary=False)
    at = open_page("app_pages/compare.py", run="20260102-000000-e2vpt-dsprites-loc")
    no_exception(at)
    dataset = lambda: next(s for s in at.selectbox if s.label == "Dataset").value  # noqa: E731
    assert dataset() == "dsprites-loc" and not at.info
    at = open_page("app_pages/compare.py", run="20260103-000000-e2vpt-digits")
    no_exception(at)
    assert dataset() == "digits"
    assert "`20260103-000000-e2vpt-digits` is not on the chart: it is running" in texts(at, "info")


def test_embeddings_offers_side_by_side_only_finished_runs_on_the_same_data_with_weights(roots, fake_run):
    import torch
    from safetensors.torch import save_file

    runs, _ = roots
    for run_id, dataset, weights in (("a-digits", "digits", True), ("b-digits-no-weights", "digits", False),
                                     ("c-dsprites", "dsprites-loc", True), ("d-digits", "digits", True)):
        path = fake_run(runs, run_id, dataset=dataset)
        if weights:
            save_file({"x": torch.zeros(1)}, str(path / "weights.safetensors"))
    at = open_page("app_pages/embeddings.py", run="d-digits")
    picker = next(s for s in at.selectbox if s.label == "Side by side with")
    assert [o.split(" · ")[-1] for o in picker.options[2:]] == ["a-digits"]


def test_an_impossible_setting_is_refused_before_a_run_exists(roots):
    runs, _ = roots
    at = open_page("app_pages/train.py")
    at.selectbox(key="cfg_method").set_value("vpt-deep")
    at.number_input(key="cfg_prompt_len").set_value(0)
    submit(at)
    no_exception(at)
    assert "“Visual prompt tokens per layer (p)” must be at least 1 for vpt-deep" in texts(at, "error")
    assert "--" not in texts(at, "error")  # said in the form's words, not the command line's
    assert list(runs.iterdir()) == []


def test_a_data_folder_that_does_not_exist_is_refused_and_no_run_is_lost(roots, fake_run, fake_spawn):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/train.py")
    at.selectbox(key="cfg_dataset").set_value("imagefolder")
    at.text_input(key="cfg_data_root").input("no-such-folder")
    submit(at)
    no_exception(at)
    assert "does not exist" in texts(at, "error")
    assert [p.name for p in runs.iterdir()] == ["20260101-000000-e2vpt-digits"]
    assert fake_spawn == []


def test_fashion_mnist_says_what_it_needs_on_a_machine_without_its_files(roots, fake_spawn, monkeypatch, tmp_path):
    from e2vpt.data import builtin

    runs, _ = roots
    monkeypatch.setattr(builtin, "FASHION_MNIST_SYSTEM_DIRS", [str(tmp_path / "not-installed")])  # a pip-only machine
    at = open_page("app_pages/train.py")
    box = at.selectbox(key="cfg_dataset")
    assert any(o.startswith("fashion-mnist (needs its files") for o in box.options), box.options
    assert all("no files needed" in o for o in box.options if o.startswith(("digits (", "dsprites-", "clevr-count")))
    box.set_value("fashion-mnist")
    submit(at)
    no_exception(at)
    error = texts(at, "error")
    assert "fashion-mnist's files are not on this machine" in error and "Download the dataset" in error
    assert "--" not in error and list(runs.iterdir()) == [] and fake_spawn == []


def test_more_prompts_than_patches_asks_before_starting_then_starts_on_a_second_press(roots, fake_spawn):
    runs, _ = roots
    at = open_page("app_pages/train.py")
    at.checkbox(key="cfg_pretrained").set_value(False)
    at.number_input(key="cfg_prompt_len").set_value(200)
    at.number_input(key="cfg_kv_len").set_value(200)
    submit(at)
    no_exception(at)
    warning = texts(at, "warning")
    assert "200 visual prompt tokens per layer outnumber the 64 patches" in warning
    assert "200 key-value prompts per layer outnumber" in warning and "again to start it anyway" in warning
    assert list(runs.iterdir()) == [] and fake_spawn == []
    submit(at)  # the same settings, pressed again: as asked
    no_exception(at)
    assert "Started" in texts(at, "success") and len(list(runs.iterdir())) == 1


def test_start_pressed_twice_starts_one_run(roots, fake_spawn):
    runs, _ = roots
    at = open_page("app_pages/train.py")
    at.checkbox(key="cfg_pretrained").set_value(False)
    submit(at)
    no_exception(at)
    assert "Started" in texts(at, "success")
    submit(at)
    no_exception(at)
    assert "not started twice" in texts(at, "warning")
    started = [p for p in runs.iterdir()]
    assert len(started) == 1 and len(fake_spawn) == 1
    assert at.query_params["run"] == started[0].name
    args = fake_spawn[0][1]
    assert args[:2] == ["train", "--config"] and "--run-dir" in args and "--quiet" in args
    status = RunDir(started[0]).status()
    assert status["state"] == "queued" and status["pid"] == fake_spawn[0][0].pid
    # a changed setting is a different run: it may train alongside the first
    at.number_input(key="cfg_seed").set_value(1)
    submit(at)
    assert len(list(runs.iterdir())) == 2


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_an_uploaded_zip_lands_in_a_new_folder_under_the_data_root(roots, tmp_path):
    _, data = roots
    png = bytes.fromhex("89504e470d0a1a0a")  # contents do not matter to extraction
    at = open_page("app_pages/train.py")
    at.file_uploader(key="upload_zip").upload("pets.zip", _zip({"cat/1.png": png, "dog/2.png": png,
                                                                  "notes.txt": b"hi"}), "application/zip")
    at.run()
    next(b for b in at.button if b.label == "Add to the data folder").click().run()
    no_exception(at)
    assert "Added `pets`" in texts(at, "success")
    assert sorted(p.name for p in (data / "pets").iterdir()) == ["cat", "dog"]
    assert at.text_input(key="cfg_data_root").value == "pets"
    assert at.selectbox(key="cfg_dataset").value == "imagefolder"
    # a hostile archive is refused whole, and nothing lands outside the data root
    at.file_uploader(key="upload_zip").set_value(("evil.zip", _zip({"../../escape.png": png}), "application/zip"))
    at.run()
    next(b for b in at.button if b.label == "Add to the data folder").click().run()
    no_exception(at)
    assert "zip slip" in texts(at, "error")
    assert not (tmp_path / "escape.png").exists() and sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == ["pets"]


def test_the_paper_preset_fills_the_vit_b_setting(roots):
    at = open_page("app_pages/train.py")
    at.radio(key="preset").set_value("Paper: ViT-B/16 on a GPU").run()
    no_exception(at)
    assert at.selectbox(key="cfg_backbone").value == "vit_base_patch16_224.augreg_in21k"
    assert at.number_input(key="cfg_prompt_len").value == 10
    assert at.number_input(key="cfg_kv_len").value == 5
    assert at.radio(key="cfg_optimizer").value == "sgd"
    assert at.radio(key="cfg_mask_scope").value == "shared"
    assert at.radio(key="cfg_recipe").value == "paper" and at.checkbox(key="cfg_kv_shared").value is False
    assert at.number_input(key="cfg_epochs").value == 100
    at.radio(key="preset").set_value("Official code: ViT-B/16 on a GPU").run()
    assert at.radio(key="cfg_recipe").value == "official" and at.checkbox(key="cfg_kv_shared").value is True
    assert at.radio(key="cfg_pruned_tokens").value == "zero" and at.checkbox(key="cfg_train_masks").value is True


def test_picking_a_recipe_sets_its_choices_and_keeps_the_rest_of_the_form(roots):
    at = open_page("app_pages/train.py")
    at.radio(key="preset").set_value("Paper: ViT-B/16 on a GPU").run()
    at.radio(key="cfg_recipe").set_value("official").run()
    no_exception(at)
    assert (at.radio(key="cfg_importance").value, at.radio(key="cfg_rewind").value) == ("signed", "reinit")
    assert at.number_input(key="cfg_epochs").value == 100  # a recipe sets the method's choices, not the schedule
    at.radio(key="cfg_recipe").set_value("studio").run()
    assert (at.radio(key="cfg_importance").value, at.checkbox(key="cfg_train_masks").value) == ("abs", False)


def test_runs_page_deletes_only_after_confirmation_and_then_selects_nothing(roots, fake_run):
    runs, _ = roots
    fake_run(runs, "20260102-000000-e2vpt-digits")
    fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/runs.py")
    no_exception(at)
    # select the first row (the newest run) the way a click does, then ask to delete
    at.session_state["runs_table-0"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    next(b for b in at.button if b.label == "Delete…").click().run()
    assert (runs / "20260102-000000-e2vpt-digits").is_dir()
    assert "cannot be undone" in texts(at, "warning")
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    no_exception(at)
    assert not (runs / "20260102-000000-e2vpt-digits").exists()
    # the selection did not slide onto the run below: nothing is selected, no Delete button is offered
    assert (runs / "20260101-000000-e2vpt-digits").is_dir()
    assert "Select a row to act on it." in texts(at, "caption")
    assert not any(b.label in ("Delete…", "Yes, delete") for b in at.button)


# --------------------------------------------------------------------------------------------------
# the launcher: roots, ids, refusals
def test_run_ids_cannot_leave_the_runs_root(roots):
    runs, _ = roots
    for bad in ["../x", "..", ".", "/etc", "a/b/c", "a/../b", "a//b", "a/", "a/..", "", "x" * 200, "-rf"]:
        with pytest.raises(RunDirError):
            run_store.run_path(bad, runs)
    assert run_store.run_path("20260101-e2vpt", runs) == runs.resolve() / "20260101-e2vpt"
    assert run_store.run_path("sweep/t000", runs) == runs.resolve() / "sweep" / "t000"  # a sweep's trial
    with pytest.raises(RunDirError, match="cannot contain"):  # but a new run is never made inside another folder
        launch.start_run(TrainConfig(), runs, run_id="sweep/t000")


def test_listing_skips_links_that_point_outside_the_root(roots, fake_run, tmp_path):
    runs, _ = roots
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    fake_run(outside, "secret")
    (runs / "linked").symlink_to(outside / "secret")
    fake_run(runs, "20260101-000000-e2vpt-digits")
    assert [r["id"] for r in run_store.list_runs(runs)] == ["20260101-000000-e2vpt-digits"]
    with pytest.raises(RunDirError):
        launch.delete_run("linked", runs)
    assert (outside / "secret" / "config.json").is_file()


def test_delete_refuses_active_runs_folders_outside_and_non_runs(roots, fake_run, tmp_path):
    runs, _ = roots
    fake_run(runs, "20260101-000000-e2vpt-digits", state="running")
    with pytest.raises(RunDirError, match="still training"):
        launch.delete_run("20260101-000000-e2vpt-digits", runs)
    (runs / "not-a-run").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        launch.delete_run("not-a-run", runs)
    elsewhere = fake_run(tmp_path, "other")
    with pytest.raises(RunDirError, match="outside"):
        launch.delete_run(str(elsewhere), runs)
    assert elsewhere.is_dir() and (runs / "not-a-run").is_dir()


def test_inputs_are_checked_against_the_data_root_before_a_run_exists(roots, tmp_path):
    runs, data = roots
    (data / "mine" / "cat").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    cases = [
        (TrainConfig(dataset="imagefolder", data_root=str(tmp_path / "outside"), pretrained=False), "outside"),
        (TrainConfig(dataset="imagefolder", data_root="../outside", pretrained=False), "outside"),
        (TrainConfig(dataset="imagefolder", data_root="missing", pretrained=False), "does not exist"),
        (TrainConfig(dataset="imagefolder", pretrained=False), "choose its folder"),
        (TrainConfig(weights=str(tmp_path / "w.safetensors"), pretrained=False), "outside"),
        (TrainConfig(backbone="not_a_vit_at_all", pretrained=False), "unknown backbone"),
    ]
    for config, message in cases:
        with pytest.raises(UserError, match=message):
            launch.start_run(config, runs, data=data)
    assert list(runs.iterdir()) == []
    checked = launch.check_inputs(TrainConfig(dataset="imagefolder", data_root="mine", pretrained=False), data)
    assert checked.data_root == str((data / "mine").resolve())


def test_a_second_start_for_the_same_id_is_refused(roots, fake_spawn):
    runs, _ = roots
    config = TrainConfig(pretrained=False)
    run = launch.start_run(config, runs, run_id="same")
    assert launch.is_active(run)
    with pytest.raises(RunDirError, match="already exists"):
        launch.start_run(config, runs, run_id="same")
    assert len(fake_spawn) == 1
    saved = json.loads(run.config_file.read_text())
    assert saved["method"] == "e2vpt" and saved["extra"]["created"]


def test_cancel_signals_only_a_trainer_process(roots, fake_run):
    runs, _ = roots
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = fake_run(runs, "20260101-000000-e2vpt-digits", state="running", pid=bystander.pid)
        assert launch.cancel_run(path.name, runs) is True
        assert (path / "cancel.request").is_file()  # the trainer stops at its next step
        time.sleep(0.2)
        assert bystander.poll() is None  # a pid that is not an e2vpt trainer is never signalled
    finally:
        bystander.kill()
        bystander.wait()
    done = fake_run(runs, "20260101-000001-e2vpt-digits")
    assert launch.cancel_run(done.name, runs) is False


def test_resume_refuses_finished_and_active_runs_and_clears_the_cancel_request(roots, fake_run, fake_spawn):
    runs, _ = roots
    with pytest.raises(RunDirError, match="already finished"):
        launch.resume_run(fake_run(runs, "done-run").name, runs)
    with pytest.raises(RunDirError, match="cannot be resumed while it trains"):
        launch.resume_run(fake_run(runs, "active-run", state="running").name, runs)
    cancelled = fake_run(runs, "cancelled-run", state="cancelled", summary=False)
    (cancelled / "cancel.request").write_text("x")
    run = launch.resume_run(cancelled.name, runs)
    assert not run.cancel_file.exists()
    assert fake_spawn[-1][1] == ["train", "--resume", str(cancelled.resolve()), "--quiet"]
    assert run.status()["state"] == "queued"


# --------------------------------------------------------------------------------------------------
# charts: hover on everything, the disk drawn square, the data behind each chart
def test_every_chart_has_hover_details(fake_run, tmp_path):
    from e2vpt.analysis.pruning_views import importance_maps, pruning_trajectory

    path = fake_run(tmp_path, "r")
    run = RunDir(path)
    maps = importance_maps(path)
    trajectory = pruning_trajectory(path)
    report = {"labels": [0, 0, 1, 1], "classes": [0, 1], "class_names": ["cat", "dog"],
              "points_hpca": [[0.1, 0.2], [0.2, 0.1], [-0.5, -0.5], [-0.6, -0.4]], "points_umap": None,
              "points_euclid": [[1, 0], [0.9, 0.1], [-1, 0], [-0.8, 0.1]],
              "centroids": {"hpca": [[0.15, 0.15], [-0.55, -0.45]], "euclid": [[0.95, 0.05], [-0.9, 0.05]],
                            "radius": [0.4, 1.5]}}
    figures = [
        charts.training_curves(charts.metrics_frame(run.metrics()), charts.prune_frame(run.metrics())),
        charts.importance_heatmap(maps[1]), charts.importance_heatmap(maps[1], normalised=True),
        charts.importance_heatmap(maps[0]), charts.segment_heatmap(maps[2], 1),
        charts.trajectory_figure(trajectory["rounds"], selected_round=2),
        charts.layer_fraction_figure(trajectory["layers"]),
        charts.lifetime_figure(trajectory["lifetimes"], 2),
        charts.embedding_scatter(report, "hpca"), charts.embedding_scatter(report, "euclid"),
        charts.accuracy_vs_params(charts.runs_frame([{"id": "r", "state": "done", "method": "e2vpt",
                                                      "dataset": "digits", "backbone": "demo", "test_acc": 0.9,
                                                      "val_acc": 0.9, "tuned_params": 1000, "tuned_pct": 0.5}])),
    ]
    for fig in figures:
        assert fig.data, fig.layout.title.text
        for trace in fig.data:
            assert trace.hovertemplate or trace.hoverinfo == "skip", (fig.layout.title.text, trace.name)
        assert "<html>" in charts.figure_html(fig)[:300].lower() or "<html" in charts.figure_html(fig).lower()


def test_heatmaps_outline_survivors_and_grey_what_was_pruned(fake_run, tmp_path):
    from e2vpt.analysis.pruning_views import importance_maps

    maps = importance_maps(fake_run(tmp_path, "r"))
    m = maps[1]
    fig = charts.importance_heatmap(m)
    outlines = [s for s in fig.layout.shapes if s.line.color == charts.OUTLINE]
    reds = [s for s in fig.layout.shapes if s.line.color == charts.PRUNED_NOW]
    assert len(outlines) == int(m["token_mask"].sum())
    assert len(reds) == int((m["token_mask"] == 0).sum())  # pruned in this very round: framed in red,
    assert all(s.fillcolor == "rgba(0,0,0,0)" for s in fig.layout.shapes)  # and its score's colour still shows
    assert [t.name for t in fig.data[1:]] == ["kept (outlined)", "pruned in this round (red frame)"]  # a legend each
    assert "cut between" in fig.layout.title.text and any("rank" in c[2] for row in fig.data[0].customdata for c in row)
    later = charts.importance_heatmap(maps[2])
    assert "pruned in an earlier round" in [t.name for t in later.data[1:]]
    frame = charts.importance_frame(maps[2])
    assert set(frame["status"]) == {"kept", "pruned in this round", "pruned in an earlier round"}
    assert frame.loc[frame["status"] == "pruned in an earlier round", "score"].isna().all()


def test_the_poincare_disk_is_round_and_square(tmp_path):
    report = {"labels": [0, 1], "classes": [0, 1], "class_names": ["a", "b"],
              "points_hpca": [[0.1, 0.2], [-0.5, -0.5]], "centroids": {"hpca": [[0.1, 0.2], [-0.5, -0.5]]}}
    fig = charts.embedding_scatter(report, "hpca")
    circle = [s for s in fig.layout.shapes if s.type == "circle"]
    assert len(circle) == 1 and (circle[0].x0, circle[0].x1, circle[0].y0, circle[0].y1) == (-1, 1, -1, 1)
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    assert [t.name for t in fig.data if t.showlegend is not False] == ["a", "b"]
    frame = charts.embedding_frame(report, "hpca")
    assert list(frame["class"]) == ["a", "b"] and np.allclose(frame["norm"], [np.hypot(0.1, 0.2), np.hypot(0.5, 0.5)])


def test_a_clicked_points_image_row_reaches_the_page_as_a_plain_pair():
    # the browser sends a point's customdata back as JSON: a typed array (plotly's encoding of numpy
    # arrays) would arrive as {"0": row, "1": radius}, and the page reads customdata[0]
    report = {"labels": [0, 1, 1], "classes": [0, 1], "indices": [7, 3, 9],
              "points_hpca": [[0.1, 0.2], [-0.5, -0.5], [0.3, 0.0]]}
    sent = json.loads(charts.embedding_scatter(report, "hpca").to_json())["data"]
    points = [trace for trace in sent if trace.get("customdata") is not None and trace["name"] in ("0", "1")]
    assert [[row for row, _ in trace["customdata"]] for trace in points] == [[7], [3, 9]]


def test_accuracy_vs_parameters_uses_a_log_axis():
    frame = charts.runs_frame([
        {"id": "a", "state": "done", "method": "linear", "dataset": "d", "backbone": "b", "test_acc": 0.5,
         "val_acc": 0.5, "tuned_params": 100, "tuned_pct": 0.01},
        {"id": "b", "state": "running", "method": "e2vpt", "dataset": "d", "backbone": "b"}])
    assert list(frame["id"]) == ["a"]  # only finished runs are compared
    assert charts.accuracy_vs_params(frame).layout.xaxis.type == "log"


def test_compare_zooms_to_the_runs_and_reads_in_whole_numbers_and_units():
    frame = charts.runs_frame([
        {"id": m, "state": "done", "method": m, "dataset": "d", "backbone": "b", "test_acc": acc, "val_acc": acc,
         "tuned_params": n, "tuned_pct": n / 5e6 * 100, "wall_s": 663.047}
        for m, acc, n in (("vpt-deep", 0.925, 21000), ("e2vpt", 0.945, 14602), ("linear", 0.926, 1930))])
    fig = charts.accuracy_vs_params(frame)
    low, high = fig.layout.yaxis.range
    assert 0.90 <= low < 0.925 and 0.945 < high <= 0.96  # 92.5 / 94.5 / 92.6 no longer look equal
    assert len(fig.layout.xaxis.tickvals) >= 3
    for value, text in zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext):
        assert text == f"{value:,.0f}" and len(text) > 1  # "10,000", never a bare "2" or "5"
    table = charts.runs_table(frame)
    assert {"test accuracy (%)", "tuned parameters", "wall time (min)"} <= set(table.columns)
    assert table["test accuracy (%)"].tolist() == [92.5, 94.5, 92.6] and table["wall time (min)"].tolist()[0] == 11.1


def test_the_training_curves_mark_each_rewind_and_the_page_says_why_the_loss_jumps():
    epochs = pd.DataFrame({"step": [1, 2, 3], "phase": ["train"] * 3, "round": [0, 1, 1], "epoch": [1, 1, 2],
                           "lr": [1e-3] * 3, "wall_s": [1.0, 2.0, 3.0], "train_loss": [1.0, 2.0, 0.5],
                           "val_loss": [1.0, 2.1, 0.6], "train_acc": [0.5, 0.3, 0.8], "val_acc": [0.5, 0.3, 0.8]})
    prunes = pd.DataFrame({"round": [1], "after_step": [1]})
    fig = charts.training_curves(epochs, prunes, rewind="init")
    assert {a.text for a in fig.layout.annotations} >= {"prune 1 + rewind"}
    assert "prune 1" in {a.text for a in charts.training_curves(epochs, prunes).layout.annotations}


# --------------------------------------------------------------------------------------------------
# one real run: started in its own process, cancelled, resumed to the end, then every page
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("real") / "runs"
    config = TrainConfig(backbone="demo", pretrained=False, dataset="digits", method="e2vpt", epochs=1,
                         retrain_epochs=1, prune_rounds=1, prompt_len=2, kv_len=1)
    run = launch.start_run(config, runs)
    events = {"start_status": run.status()["state"]}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until it is inside its first epoch, then cancel
        status = run.status()
        if status["state"] == "running" and status.get("progress_in_epoch") is not None:
            break
        assert status["state"] in ("queued", "running"), (status, launch.log_tail(run))
        time.sleep(0.5)
    events["cancel_sent"] = launch.cancel_run(run)
    while launch.is_active(run) and time.monotonic() < deadline:
        time.sleep(0.5)
    events["after_cancel"] = run.status()["state"]
    launch.resume_run(run)
    events["resumed_status"] = run.status()["state"]
    while launch.is_active(run) and time.monotonic() < deadline:
        time.sleep(1)
    events["final"] = run.status()
    events["log"] = launch.log_tail(run, 40)
    return runs, run, events


@pytest.mark.slow
def test_a_real_run_is_cancelled_cleanly_and_resumed_to_the_end(real_run):
    _, run, events = real_run
    assert events["start_status"] == "queued"
    assert events["cancel_sent"] is True
    assert events["after_cancel"] == "cancelled", events["log"]
    assert events["resumed_status"] == "queued"
    assert events["final"]["state"] == "done", events["log"]
    assert run.summary_file.is_file() and run.weights_file.is_file()
    assert "--resume" in run.log_file.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_the_real_run(real_run, monkeypatch, page):
    runs, run, events = real_run
    assert events["final"]["state"] == "done", events["log"]
    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    at = open_page(page, run=run.id)
    no_exception(at)
    assert not at.error, texts(at, "error")
    # Prompts: importance, segments, [CLS]'s attention to the prompts, the prompts' attention over an image
    expected = {"app_pages/train.py": 1, "app_pages/prompts.py": 4, "app_pages/pruning.py": 3, "app_pages/embeddings.py": 1,
                "app_pages/compare.py": 1}
    assert charts_on(at) == expected.get(page, 0)


@pytest.mark.slow
def test_the_prompts_page_measures_a_pruning_decision_against_reality_on_request(real_run, monkeypatch):
    runs, run, events = real_run
    monkeypatch.setenv(run_store.RUNS_ROOT_ENV, str(runs))
    at = open_page("app_pages/prompts.py", run=run.id)
    button = next(b for b in at.button if b.label.startswith("Measure round 1's decision"))
    assert charts_on(at) == 4  # measured only when asked: one validation pass per token
    button.click().run()
    no_exception(at)
    assert not at.error, texts(at, "error")
    assert charts_on(at) == 5 and "Spearman" in texts(at, "caption")
    at = open_page("app_pages/prompts.py", run=run.id)  # cached in the run's analysis/: shown at once
    assert charts_on(at) == 5 and not any(b.label.startswith("Measure") for b in at.button)
    (run.analysis_dir / "ablation-round-1.json").unlink()  # the shared run as the other tests expect it


# --------------------------------------------------------------------------------------------------
# malformed runs next to good ones: one bad run never breaks another run, a page or the CLI
MALFORMED = {  # run id -> (file, content): each a real malformed file, as a crash, an editor or a bad copy leaves it
    "bad-config-list": ("config.json", '["x"]'),
    "bad-config-key": ("config.json", None),  # filled below: a valid config plus an unknown key
    "bad-config-value": ("config.json", None),  # a method that does not exist
    "bad-summary-list": ("summary.json", "[1]"),
    "bad-summary-field": ("summary.json", '{"test_acc": "abc", "tuned_pct": [1]}'),
    "bad-status": ("status.json", "{not json"),
    "bad-status-list": ("status.json", "[]"),
    "bad-pruning": ("pruning.json", "garbage"),
    "bad-pruning-rounds": ("pruning.json", '{"rounds": 3}'),
    "bad-metrics": ("metrics.jsonl", '[1]\n"x"\n{"kind": "epoch", "round": "a"}\n'),
}


@pytest.fixture
def malformed_runs(roots, fake_run):
    runs, _ = roots
    good = fake_run(runs, "20260101-000000-e2vpt-digits")
    for run_id, (name, content) in MALFORMED.items():
        path = fake_run(runs, run_id)
        if content is None:
            config = json.loads((good / "config.json").read_text())
            config.update({"bogus": 1} if run_id == "bad-config-key" else {"method": "no-such-method"})
            content = json.dumps(config)
        (path / name).write_text(content)
    return runs


@pytest.mark.parametrize("page", PAGES)
def test_malformed_runs_break_no_page_and_the_good_run_still_shows(malformed_runs, page):
    at = open_page(page, run="20260101-000000-e2vpt-digits")
    no_exception(at)
    assert "unexpected error" not in texts(at, "error")
    assert "20260101-000000-e2vpt-digits" in at.sidebar.selectbox[0].options


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("bad", sorted(MALFORMED))
def test_a_malformed_run_opens_as_unreadable_with_the_reason(malformed_runs, page, bad):
    at = open_page(page, run=bad)
    no_exception(at)
    assert "unexpected error" not in texts(at, "error")
    if bad not in ("bad-status", "bad-status-list", "bad-metrics"):  # readable: a whole summary, whole lines
        reason = "\n".join(str(w.value) for w in at.sidebar.warning)
        assert "cannot be read" in reason and MALFORMED[bad][0] in reason, reason


def test_the_cli_lists_good_runs_next_to_unreadable_ones(malformed_runs):
    result = subprocess.run([sys.executable, "-m", "e2vpt", "runs", "--root", str(malformed_runs)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "done" in lines["20260101-000000-e2vpt-digits"]
    assert "done" in lines["bad-status"]  # a damaged status never hides a finished run: its summary is whole
    for bad in ("bad-config-list", "bad-summary-list", "bad-pruning-rounds", "bad-config-key", "bad-config-value"):
        assert "unreadable" in lines[bad], lines.get(bad)
    assert "bogus" in lines["bad-config-key"] and "summary.json" in lines["bad-summary-list"]


def test_embeddings_refuse_a_run_whose_data_folder_was_edited_to_leave_the_data_root(roots, fake_run, tmp_path):
    runs, _ = roots
    run_dir = fake_run(runs, "20260101-000000-e2vpt-mine")
    (tmp_path / "private" / "cat").mkdir(parents=True)
    config = json.loads((run_dir / "config.json").read_text())
    config.update(dataset="imagefolder", data_root=str(tmp_path / "private"))
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "weights.safetensors").write_bytes(b"not read")
    at = open_page("app_pages/embeddings.py", run="20260101-000000-e2vpt-mine")
    no_exception(at)
    assert "outside" in texts(at, "error") and not (run_dir / "analysis").exists()


def test_the_pruning_page_states_the_rule_that_kept_a_round_and_what_round_0_scored(roots, fake_run):
    import json

    from e2vpt.analysis.pruning_views import selection_note

    runs, _ = roots
    path = fake_run(runs, "20260101-000000-e2vpt-digits")
    assert selection_note(path).startswith("Kept: round 2, by the best validation accuracy among the pruning rounds")
    assert "Round 0 scored 0.700 on validation" in selection_note(path)
    record = json.loads((path / "pruning.json").read_text())
    record["rounds"][0]["val_acc"] = 0.97  # the unpruned model was better: the page says what pruning cost
    (path / "pruning.json").write_text(json.dumps(record))
    assert "pruning cost 17.0 points here" in selection_note(path)
    at = open_page("app_pages/pruning.py", run=path.name)
    no_exception(at)
    assert "Round 0 scored higher on validation (0.970 against 0.800)" in texts(at, "caption")


def test_pruning_tables_count_from_1_and_lifetimes_have_colours_of_their_own(fake_run, tmp_path):
    from e2vpt.analysis.pruning_views import pruning_trajectory

    trajectory = pruning_trajectory(fake_run(tmp_path, "r", layers=3, prompt_len=4))
    assert trajectory["layers"]["layer"].min() == 1 and trajectory["layers"]["layer"].max() == 3
    assert (trajectory["lifetimes"][["layer", "token"]].min() == 1).all()
    assert trajectory["lifetimes"]["token"].max() == 4
    fig = charts.lifetime_figure(trajectory["lifetimes"], 2)
    assert fig.data[0].z.shape == (3, 4) and not np.isnan(fig.data[0].z).any()
    scale = [c for _, c in fig.data[0].colorscale]
    assert scale[-1] == charts.SURVIVED and charts.color(0) not in scale and "#222222" not in scale
