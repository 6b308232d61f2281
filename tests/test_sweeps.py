"""Sweeps: the spec expands to the trials a user means, bad specs are one line, the sweep folder is
resumable and readable from every entry point. The Ray Tune runs themselves are in test_sweeps_ray.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2vpt.cli import main
from e2vpt.errors import ConfigError, RunDirError
from e2vpt.runs import list_runs, open_run
from e2vpt.sweeps import SweepDir, SweepSpec, frontier
from e2vpt.sweeps.spec import parse_grid, parse_random

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# expansion
def test_grid_methods_and_seeds_multiply_into_trials_with_stable_ids():
    spec = SweepSpec(methods=["vpt-deep", "e2vpt"], grid={"lr": [0.01, 0.03], "prompt_len": [2, 4]}, seeds=[0, 1])
    trials = spec.trials()
    assert len(trials) == 2 * 2 * 2 * 2
    assert [t.id for t in trials] == [t.id for t in SweepSpec.from_dict(spec.to_dict()).trials()]
    assert len({t.id for t in trials}) == len(trials)
    first = trials[0]
    assert first.config["method"] == "vpt-deep" and first.config["lr"] == 0.01 and first.config["prompt_len"] == 2
    assert first.values == {"lr": 0.01, "prompt_len": 2}
    assert {t.seed for t in trials} == {0, 1}
    assert all(t.config["seed"] == t.seed for t in trials)


def test_a_setting_a_method_does_not_use_does_not_multiply_its_trials():
    spec = SweepSpec(methods=["linear", "vpt-deep", "e2vpt"], grid={"prompt_len": [1, 2, 4, 8], "kv_len": [1, 4]})
    by_method = {m: [t for t in spec.trials() if t.method == m] for m in ("linear", "vpt-deep", "e2vpt")}
    assert len(by_method["linear"]) == 1 and by_method["linear"][0].values == {}
    assert len(by_method["vpt-deep"]) == 4 and all("kv_len" not in t.values for t in by_method["vpt-deep"])
    assert len(by_method["e2vpt"]) == 8
    # the linear probe keeps the defaults for what it ignores
    assert by_method["linear"][0].config["prompt_len"] == SweepSpec().trials()[0].config["prompt_len"]


def test_each_method_can_have_its_own_grid():
    spec = SweepSpec.from_dict({"methods": {"linear": None, "vpt-deep": {"grid": {"prompt_len": [1, 2, 4, 8]}},
                                            "e2vpt": {"grid": {"prompt_len": [4, 8], "kv_len": [1, 4]},
                                                      "base": {"prune_rounds": 1}}},
                                "seeds": [0, 1, 2]})
    counts = {m: sum(t.method == m for t in spec.trials()) for m in ("linear", "vpt-deep", "e2vpt")}
    assert counts == {"linear": 3, "vpt-deep": 12, "e2vpt": 12}
    assert all(t.config["prune_rounds"] == 1 for t in spec.trials() if t.method == "e2vpt")


def test_random_draws_are_in_range_and_the_same_for_the_same_spec():
    spec = SweepSpec(methods=["e2vpt"], random={"lr": {"loguniform": [1e-3, 1e-1]}, "prompt_len": {"choice": [2, 4]},
                                                 "kv_len": {"randint": [1, 3]}}, samples=6, search_seed=7)
    trials = spec.trials()
    assert len(trials) == 6
    assert all(1e-3 <= t.config["lr"] <= 1e-1 and t.config["prompt_len"] in (2, 4) and 1 <= t.config["kv_len"] <= 3
               for t in trials)
    assert [t.config for t in trials] == [t.config for t in SweepSpec.from_dict(spec.to_dict()).trials()]
    other = SweepSpec(methods=["e2vpt"], random={"lr": {"loguniform": [1e-3, 1e-1]}}, samples=6, search_seed=8)
    assert [t.config["lr"] for t in other.trials()] != [t.config["lr"] for t in trials]


def test_command_line_grid_values_take_the_settings_types():
    assert parse_grid(["lr=0.01,0.03", "prompt-len=1,2", "kv_shared=true,false", "retrain_epochs=none,2"]) == {
        "lr": [0.01, 0.03], "prompt_len": [1, 2], "kv_shared": [True, False], "retrain_epochs": [None, 2]}
    assert parse_random(["lr=loguniform:1e-3:1e-1"]) == {"lr": {"loguniform": [1e-3, 1e-1]}}


# --------------------------------------------------------------------------------------------------
# VPT's protocol: a search on validation accuracy, then the chosen configuration on train + val
def test_the_vpt_protocol_searches_lr_and_weight_decay_unless_the_spec_sweeps_them():
    spec = SweepSpec(methods=["vpt-deep"], protocol="vpt")
    assert {t.values["lr"] for t in spec.trials()} == {0.003, 0.01, 0.03} and len(spec.trials()) == 9
    assert all(t.config["train_on"] == "train" and t.stage == "search" for t in spec.trials())
    sgd = SweepSpec(methods=["vpt-deep"], protocol="vpt", base={"optimizer": "sgd"})
    assert len(sgd.trials()) == 40 and max(t.values["lr"] for t in sgd.trials()) == 50.0  # VPT's own grid
    own = SweepSpec(methods=["vpt-deep"], protocol="vpt", grid={"lr": [0.01, 0.1]})
    assert [t.values for t in own.trials()] == [{"lr": 0.01}, {"lr": 0.1}]
    assert SweepSpec.from_dict(spec.to_dict()).trials() == spec.trials()  # what sweep.json stores expands the same


def test_the_protocol_retrains_each_methods_best_mean_validation_config_on_train_and_val():
    spec = SweepSpec(methods=["linear", "vpt-deep"], grid={"lr": [0.01, 0.03]}, seeds=[0, 1], protocol="vpt",
                     final_seeds=[4, 5, 6])
    trials = {(t.method, t.values["lr"], t.seed): t.id for t in spec.trials()}
    val = {trials["linear", 0.01, 0]: 0.90, trials["linear", 0.01, 1]: 0.70,  # mean 0.80: one lucky seed
           trials["linear", 0.03, 0]: 0.85, trials["linear", 0.03, 1]: 0.84,  # mean 0.845: chosen
           trials["vpt-deep", 0.01, 0]: 0.5}  # vpt-deep's other trials did not finish
    chosen = spec.best_points(val)
    assert chosen == {"linear": {"lr": 0.03}, "vpt-deep": {"lr": 0.01}}
    assert spec.best_points({trials["linear", 0.01, 0]: 0.8, trials["linear", 0.03, 0]: 0.8}) == {"linear": {"lr": 0.01}}
    finals = spec.final_trials(chosen)
    assert [t.id for t in finals] == ["f000-linear-s4", "f001-linear-s5", "f002-linear-s6", "f003-vpt-deep-s4",
                                      "f004-vpt-deep-s5", "f005-vpt-deep-s6"]
    assert all(t.stage == "final" and t.config["train_on"] == "train+val" and t.config["seed"] == t.seed
               for t in finals)
    assert {t.config["lr"] for t in finals if t.method == "linear"} == {0.03}
    assert spec.final_trials({"vpt-deep": {"lr": 0.01}})[0].id == "f000-vpt-deep-s4"


def test_the_frontier_of_a_protocol_sweep_shows_its_final_trials_and_says_what_was_chosen(tmp_path, fake_run):
    spec = SweepSpec(methods=["linear"], grid={"lr": [0.01, 0.03]}, protocol="vpt", final_seeds=[0, 1])
    sweep = SweepDir(tmp_path / "S")
    record = sweep.create(spec)
    for trial_id, acc in zip(record["trials"], (0.6, 0.7)):
        fake_run(sweep.path, trial_id, method="linear", test_acc=acc)
    rows = sweep.rows(record)
    assert "retrained on train + val" in frontier.protocol_note(record, rows)
    assert set(frontier.points(sweep)["trial"]) == set(record["trials"])  # the search, until finals finish
    for trial in spec.final_trials({"linear": {"lr": 0.03}}):
        record["trials"][trial.id] = {"method": "linear", "seed": trial.seed, "values": trial.values,
                                      "stage": "final", "status": "done"}
        fake_run(sweep.path, trial.id, method="linear", test_acc=0.75 + 0.01 * trial.seed)
    sweep.write(record)
    points = frontier.points(sweep)
    assert sorted(points["trial"]) == ["f000-linear-s0", "f001-linear-s1"]
    note = frontier.protocol_note(record, sweep.rows(record))
    assert "chose linear: lr=0.03" in note and "seeds 0, 1" in note
    header = sweep.write_leaderboard(record) and sweep.leaderboard_file.read_text().splitlines()[0].split(",")
    assert header[:4] == ["trial", "method", "stage", "lr"]


def test_the_pruning_search_scores_each_phase_0_once_and_trains_each_distinct_level_once():
    spec = SweepSpec(methods=["linear", "e2vpt"], grid={"prune_ratio": [0.25, 0.5], "kv_len": [1, 4]}, seeds=[0, 1],
                     protocol="e2vpt-search", token_levels=[0.25, 0.5, 0.75], segment_levels=[0.0, 0.25])
    assert len(spec.trials()) == 2 + 2 * 2 * 2  # the iterative trials, as the grid says
    scouts = spec.scout_trials()
    # prune_ratio never reaches phase 0: its two values share one scout per (kv_len, seed)
    assert [(t.values, t.seed) for t in scouts] == [({"kv_len": 1}, 0), ({"kv_len": 1}, 1), ({"kv_len": 4}, 0),
                                                   ({"kv_len": 4}, 1)]
    assert all(t.stage == "scout" and t.config["prune_rounds"] == 0 and t.method == "e2vpt" for t in scouts)
    levels = spec.level_trials(scouts[0], (1, 4), 16)  # one prompt layer of 4 tokens
    kept = {(t.values["prune_ratio"], t.values["segment_ratio"]) for t in levels}
    # 0.25 and 0.5 of 4 tokens prune 1 and 2 (0.75 prunes 3); segment share 0 with token share 0 is not a level
    assert len(levels) == 6 and (0.25, 0.0) in kept and (0.75, 0.25) in kept
    assert all(t.phase0_from == scouts[0].id and t.config["prune_rounds"] == 1 and t.config["kv_len"] == 1
               and t.config["seed"] == 0 and t.stage == "levels" for t in levels)
    assert levels[0].id == "p000-e2vpt-s0-t25-g0"
    # 2 tokens: 0.25 prunes none (so with segment share 0 nothing at all), 0.5 and 0.75 both prune one
    # (at least one token stays), so 0.75 adds no level of its own
    two = spec.level_trials(scouts[0], (1, 2), 16)
    assert [t.id.removeprefix("p000-e2vpt-s0-") for t in two] == ["t25-g25", "t50-g0", "t50-g25"]


def test_the_search_chooses_each_scouts_best_level_on_validation_and_the_frontier_shows_it(tmp_path, fake_run):
    spec = SweepSpec(methods=["e2vpt"], seeds=[0], protocol="e2vpt-search", token_levels=[0.25, 0.5],
                     segment_levels=[0.25])
    sweep = SweepDir(tmp_path / "S")
    record = sweep.create(spec)
    scout = spec.scout_trials()[0]
    levels = spec.level_trials(scout, (3, 4), 4)
    fake_run(sweep.path, spec.trials()[0].id, test_acc=0.8)
    fake_run(sweep.path, scout.id, rounds=0)
    # two levels tie on validation: the one with fewer parameters (more pruning) is chosen
    for trial, (val, params) in zip(levels, [(0.9, 900), (0.9, 700)]):
        path = fake_run(sweep.path, trial.id, rounds=1, test_acc=0.85, tuned_params=params)
        summary = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps(dict(summary, val_acc=val)))
    for trial in [scout, *levels]:
        record["trials"][trial.id] = {"method": "e2vpt", "seed": 0, "values": trial.values, "stage": trial.stage,
                                      "status": "done", **({"phase0_from": scout.id} if trial.phase0_from else {})}
    sweep.write(record)
    rows = {r["trial"]: r for r in sweep.rows(record)}
    assert [t for t, r in rows.items() if r["chosen"]] == [levels[1].id]
    points = frontier.points(sweep)
    search = points[points["method"] == "e2vpt-search"]
    assert list(search["trial"]) == [levels[1].id] and list(search["tuned_params"]) == [700]
    assert scout.id not in set(points["trial"]) and levels[0].id not in set(points["trial"])
    note = frontier.protocol_note(record, list(rows.values()))
    assert "scored once" in note and "t50-g25" in note and "iterative rounds (e2vpt) cost" in note
    sweep.write_leaderboard(record)
    header = sweep.leaderboard_file.read_text().splitlines()[0].split(",")
    assert "chosen" in header and header[2] == "stage"


def test_a_sweep_recorded_before_protocols_existed_is_still_the_same_sweep(tmp_path):
    sweep = SweepDir(tmp_path / "S")
    sweep.create(_spec())
    record = json.loads(sweep.sweep_file.read_text())
    for key in ("protocol", "final_seeds"):
        del record["spec"][key]
    sweep.sweep_file.write_text(json.dumps(record))
    assert list(sweep.create(_spec())["trials"]) == [t.id for t in _spec().trials()]  # not "another sweep"


# --------------------------------------------------------------------------------------------------
# bad specs: one line, before anything runs
@pytest.mark.parametrize("values, words", [
    ({"grid": {"lrr": [0.1]}}, "unknown setting 'lrr' in the sweep's grid; did you mean lr"),
    ({"methods": ["e2vtp"]}, "unknown method 'e2vtp'"),
    ({"grid": {"lr": []}}, "gives lr no values"),
    ({"methods": []}, "at least one method"),
    ({"seeds": []}, "at least one seed"),
    ({"seeds": [0, 0]}, "repeat a seed"),
    ({"gird": {"lr": [0.1]}}, "unknown key(s) gird in the sweep spec"),
    ({"grid": {"seed": [1, 2]}}, "seed is set by the sweep's --seeds"),
    ({"random": {"lr": {"loguniform": [0, 1]}}, "samples": 2}, "low > 0"),
    ({"random": {"lr": {"normal": [0, 1]}}, "samples": 2}, "needs one of uniform"),
    ({"random": {"lr": {"uniform": [0.1, 0.2]}}}, "samples is 0"),
    ({"grid": {"prompt_len": [4, 0]}, "methods": ["vpt-deep"]}, "trial vpt-deep with prompt_len=0"),
    ({"grid": {"lr": [0.01, -1.0]}}, "lr (--lr) must be more than 0"),
    ({"scheduler": "hyperband"}, "scheduler must be one of fifo, asha"),
    ({"base": {"epochs": "many"}}, "epochs (--epochs) must be a whole number"),
    ({"protocol": "vtab"}, "protocol must be one of none, vpt, e2vpt-search"),
    ({"protocol": "e2vpt-search", "methods": ["vpt-deep"]}, "add e2vpt to the methods"),
    ({"protocol": "e2vpt-search", "scheduler": "asha"}, "use --scheduler fifo"),
    ({"protocol": "e2vpt-search", "token_levels": [0.5, 1.0]}, "token_levels are shares pruned in one round"),
    ({"protocol": "e2vpt-search", "segment_levels": []}, "at least one level in segment_levels"),
    ({"protocol": "vpt", "final_seeds": [1, 1]}, "final_seeds [1, 1] repeat a seed"),
    ({"protocol": "vpt", "base": {"train_on": "train+val"}}, "leave train_on out of the sweep"),
])
def test_a_bad_spec_is_refused_in_one_line_naming_it(values, words):
    with pytest.raises(ConfigError) as info:
        SweepSpec.from_dict(values)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_spec_file_with_one_line_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        methods: [linear, vpt-deep]
        grid:
          lr: [0.01, 0.03]
          prompt_lenght: [1, 2]
        """))
    out = tmp_path / "S"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prompt_lenght" in err and "did you mean prompt_len" in err
    assert not out.exists()


def test_the_command_line_starts_the_pages_prepared_sweeps_with_its_flags_on_top():
    from e2vpt.cli import build_parser, sweep_spec_from_args
    from e2vpt.sweeps.prepared import prepared

    args = build_parser().parse_args(["sweep", "--prepared", "class comparison", "--epochs", "2", "--seeds", "0"])
    spec = sweep_spec_from_args(args)
    page = prepared("class comparison", {"epochs": 2}, seeds=[0])  # what the Sweeps page starts
    assert [t.config for t in spec.trials()] == [t.config for t in page.trials()]
    assert spec.name == "class comparison"


def test_an_unknown_prepared_sweep_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--prepared", "class comparision", "--out", str(tmp_path / "S")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no prepared sweep 'class comparision'" in err and "'class comparison'" in err
    assert not (tmp_path / "S").exists()


def test_an_empty_grid_on_the_command_line_is_refused(tmp_path, capsys):
    assert main(["sweep", "--methods", "linear", "--grid", "lr=", "--out", str(tmp_path / "S")]) == 2
    assert "gives lr no values" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the sweep folder
def _spec() -> SweepSpec:
    return SweepSpec(methods=["linear", "e2vpt"], grid={"lr": [0.01, 0.03]}, seeds=[0],
                     base={"epochs": 1, "retrain_epochs": 1, "prune_rounds": 1})


def test_a_folder_that_is_not_a_sweep_is_refused_and_left_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not empty and holds no sweep"):
        SweepDir(folder).create(_spec())
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_another_spec_in_the_same_folder_is_refused(tmp_path):
    SweepDir(tmp_path / "S").create(_spec())
    again = SweepDir(tmp_path / "S").create(SweepSpec.from_dict(dict(_spec().to_dict(), name="renamed")))
    assert again["spec"]["grid"] == {"lr": [0.01, 0.03]}  # a new label is the same sweep
    with pytest.raises(RunDirError, match="holds another sweep"):
        SweepDir(tmp_path / "S").create(SweepSpec.from_dict(dict(_spec().to_dict(), seeds=[0, 1])))


def _hold_lock(sweep: SweepDir) -> subprocess.Popen:
    """A real second process holding the sweep's driver lock, as a running driver does."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from e2vpt.sweeps import SweepDir
        held = SweepDir({str(sweep.path)!r})
        held.lock()
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_driver_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    sweep = SweepDir(tmp_path / "S")
    sweep.create(_spec())
    holder = _hold_lock(sweep)
    try:
        from e2vpt.sweeps.runner import run_sweep

        with pytest.raises(RunDirError, match="being run by another sweep process"):
            run_sweep(_spec(), sweep.path, quiet=True)
        assert sweep.is_locked()
    finally:
        holder.kill()
        holder.wait()
    assert not sweep.is_locked()  # a killed driver leaves no lock behind


def test_the_leaderboard_is_rebuilt_from_the_trials_run_folders(tmp_path, fake_run):
    """A driver killed after a trial finished but before it updated sweep.json loses nothing."""
    sweep = SweepDir(tmp_path / "S")
    record = sweep.create(_spec())
    ids = list(record["trials"])
    fake_run(sweep.path, ids[0], method="linear", test_acc=0.9, tuned_params=1930)
    fake_run(sweep.path, ids[2], state="running", pid=999_999)  # its driver died while it trained
    rows = {r["trial"]: r for r in sweep.write_leaderboard()}
    assert rows[ids[0]]["status"] == "done" and rows[ids[0]]["test_acc"] == 0.9 and rows[ids[0]]["lr"] == 0.01
    assert rows[ids[1]]["status"] == "pending" and rows[ids[1]]["test_acc"] is None
    assert rows[ids[2]]["status"] == "interrupted"  # resumes next time; the same word the Runs page uses:
    assert {r["id"]: r["state"] for r in list_runs(tmp_path)}[f"S/{ids[2]}"] == "interrupted"
    assert "interrupted" in sweep.leaderboard_file.read_text()  # and leaderboard.csv
    header = sweep.leaderboard_file.read_text().splitlines()[0].split(",")
    assert header[:3] == ["trial", "method", "lr"]
    assert {"seed", "val_acc", "test_acc", "tuned_params", "tuned_pct", "wall_s"} <= set(header)


def test_trials_are_runs_every_page_opens_as_sweep_slash_trial(tmp_path, fake_run):
    sweep = SweepDir(tmp_path / "S")
    record = sweep.create(_spec())
    trial = next(iter(record["trials"]))
    fake_run(sweep.path, trial, method="linear")
    fake_run(tmp_path, "plain-run")
    rows = {r["id"]: r for r in list_runs(tmp_path)}
    assert set(rows) == {"plain-run", f"S/{trial}"}
    assert rows[f"S/{trial}"]["sweep"] == "S" and rows["plain-run"]["sweep"] is None
    assert [r["id"] for r in list_runs(tmp_path, trials=False)] == ["plain-run"]
    run = open_run(f"S/{trial}", tmp_path)
    assert run.id == f"S/{trial}" and run.summary()["method"] == "linear"
    for bad in ("S/../plain-run", "S/", "/etc", "S/a/b"):
        with pytest.raises(RunDirError):
            open_run(bad, tmp_path)


def test_a_sweep_folder_with_a_damaged_record_is_one_line(tmp_path):
    sweep = SweepDir(tmp_path / "S")
    sweep.create(_spec())
    sweep.sweep_file.write_text("{not json")
    with pytest.raises(RunDirError, match="no readable sweep"):
        sweep.read()
    assert list_runs(tmp_path) == []
    record = json.loads(json.dumps({"spec": {"grid": {"lr": "x"}}, "trials": {}}))
    sweep.sweep_file.write_text(json.dumps(record))
    with pytest.raises(RunDirError, match="cannot be used"):
        sweep.spec()


# --------------------------------------------------------------------------------------------------
# the frontier and the Sweeps page (a finished sweep made of contract-following fake trials)
from test_app import charts_on, no_exception, open_page, texts  # noqa: E402


def finished_sweep(root: Path, fake_run, seeds=(0, 1)) -> SweepDir:
    """A done sweep: linear, VPT-deep at p=2 and 8, E2VPT (2 pruning rounds), `seeds` each."""
    spec = SweepSpec.from_dict({"methods": {"linear": {}, "vpt-deep": {"grid": {"prompt_len": [2, 8]}},
                                            "e2vpt": {}}, "seeds": list(seeds), "name": "class comparison"})
    sweep = SweepDir(root / "S")
    record = sweep.create(spec, state="done")
    accs = {"linear": (0.80, 1900), "vpt-deep": (0.90, 4000), "e2vpt": (0.91, 5000)}
    for i, (trial_id, trial) in enumerate(record["trials"].items()):
        acc, params = accs[trial["method"]]
        acc += 0.01 * trial["seed"] + (0.02 if trial["values"].get("prompt_len") == 8 else 0.0)
        fake_run(sweep.path, trial_id, method=trial["method"], test_acc=acc, tuned_params=params,
                 prompt_len=trial["values"].get("prompt_len", 4))
    sweep.write_leaderboard(record)
    return sweep


def test_the_frontier_averages_seeds_marks_the_pareto_front_and_says_what_it_shows(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path, fake_run)
    points = frontier.points(sweep, every_round=True)
    assert set(points["method"]) == {"linear", "vpt-deep", "e2vpt"} and set(points["dataset"]) == {"digits"}
    assert sorted(points[points["method"] == "e2vpt"]["round"].unique()) == [0, 1, 2]  # every round drawn
    assert points["final"].sum() == len(sweep.read()["trials"])  # one final model per trial
    table = frontier.summary(points)
    linear = table[table["method"] == "linear"].iloc[0]
    assert linear["seeds"] == 2 and abs(linear["test_acc"] - 0.805) < 1e-9 and linear["test_ci"] > 0
    assert linear["pareto"]  # the fewest parameters: on the front whatever its accuracy
    finals = table[table["final"]]
    for r in finals.itertuples():  # a final point beaten by one with fewer parameters is not on the front
        beaten = ((finals["tuned_params"] <= r.tuned_params) & (finals["test_acc"] > r.test_acc)).any()
        assert r.pareto == (not beaten)
    assert not table[~table["final"]]["pareto"].any()  # drawn rounds never make the front
    sentence = frontier.verdict(table)
    assert sentence.startswith("digits: each method's final model") and "95 % interval" in sentence
    assert "e2vpt minus vpt-deep" in sentence
    one_seed = frontier.verdict(frontier.summary(frontier.points(finished_sweep(tmp_path / "one", fake_run, seeds=(0,)))))
    assert "one seed" in one_seed


def set_rounds(run: Path, rounds: list[tuple[float, float, int]], selected: int) -> None:
    """Give a fake E2VPT run these (val_acc, test_acc, tuned_params) rounds and the round it kept;
    its summary reports the kept round, as the trainer's does."""
    pruning = json.loads((run / "pruning.json").read_text())
    for record, (val, test, params) in zip(pruning["rounds"], rounds):
        record.update(val_acc=val, test_acc=test, tuned_params=params, tuned_pct=100 * params / 200_000)
    pruning["selected_round"] = selected
    (run / "pruning.json").write_text(json.dumps(pruning))
    summary = json.loads((run / "summary.json").read_text())
    val, test, params = rounds[selected]
    summary.update(val_acc=val, test_acc=test, tuned_params=params, tuned_pct=100 * params / 200_000,
                   selected_round=selected)
    (run / "summary.json").write_text(json.dumps(summary))


def test_the_verdict_counts_each_runs_kept_round_never_a_round_picked_by_its_test_accuracy(tmp_path, fake_run):
    """The teacher's case: round 0 (unpruned, most parameters) scores best on test, but each run kept
    round 2 on validation. The verdict reports round 2, whether the other rounds are drawn or not."""
    sweep = finished_sweep(tmp_path, fake_run, seeds=(0, 1, 2))
    for trial, recorded in sweep.read()["trials"].items():
        if recorded["method"] == "e2vpt":
            seed = recorded["seed"]
            set_rounds(sweep.path / trial, [(0.90, 0.947 + 0.001 * seed, 20_362), (0.91, 0.93, 9_000),
                                            (0.92, 0.926 - 0.001 * seed, 5_710)], selected=2)
    with_rounds = frontier.summary(frontier.points(sweep, every_round=True))
    without = frontier.summary(frontier.points(sweep, every_round=False))
    assert frontier.verdicts(with_rounds) == frontier.verdicts(without)
    text = frontier.verdicts(with_rounds)["digits"]
    assert "e2vpt, kept round 2: 92.5 ± " in text and "at 5,710 parameters" in text
    assert "94.8" not in text and "20,362" not in text  # round 0's test accuracy is drawn, never counted
    drawn = with_rounds[(with_rounds["method"] == "e2vpt") & ~with_rounds["final"]]
    assert sorted(drawn["round"]) == [0, 1, 2] and not drawn["pareto"].any()
    assert abs(drawn[drawn["round"] == 0]["test_acc"].iloc[0] - 0.948) < 1e-9


def test_each_method_is_represented_by_the_configuration_best_on_validation_not_on_test(tmp_path, fake_run):
    sweep = finished_sweep(tmp_path, fake_run)
    for trial, recorded in sweep.read()["trials"].items():
        if recorded["method"] == "vpt-deep":  # p=8 is better on test (finished_sweep), p=2 on validation
            summary = json.loads((sweep.path / trial / "summary.json").read_text())
            summary["val_acc"] = 0.95 if recorded["values"]["prompt_len"] == 2 else 0.85
            (sweep.path / trial / "summary.json").write_text(json.dumps(summary))
    text = frontier.verdicts(frontier.summary(frontier.points(sweep)))["digits"]
    assert "vpt-deep p=2:" in text and "vpt-deep p=8" not in text


def test_several_datasets_get_a_frontier_and_a_verdict_each_never_mixed(tmp_path, fake_run):
    spec = SweepSpec.from_dict({"methods": ["linear", "vpt-deep", "e2vpt"], "grid": {"dataset": ["digits", "dsprites-loc"]},
                                "seeds": [0, 1]})
    sweep = SweepDir(tmp_path / "S")
    record = sweep.create(spec, state="done")
    base = {"digits": 0.93, "dsprites-loc": 0.45}
    for trial_id, trial in record["trials"].items():
        dataset = trial["values"]["dataset"]
        acc = base[dataset] + {"linear": 0.0, "vpt-deep": 0.01, "e2vpt": 0.02}[trial["method"]] + 0.002 * trial["seed"]
        fake_run(sweep.path, trial_id, method=trial["method"], dataset=dataset, test_acc=acc,
                 tuned_params={"linear": 650, "vpt-deep": 11_000, "e2vpt": 9_000}[trial["method"]])
    table = frontier.summary(frontier.points(sweep))
    assert frontier.datasets(table) == ["digits", "dsprites-loc"]
    assert not any("dataset=" in label for label in table["label"])
    for dataset, part in table[table["final"]].groupby("dataset"):  # each dataset has its own front
        assert part[part["pareto"]]["tuned_params"].min() == 650
    said = frontier.verdicts(table)
    assert set(said) == {"digits", "dsprites-loc"}
    assert "e2vpt, kept round 2: 95.1 ± " in said["digits"] and "e2vpt, kept round 2: 47.1 ± " in said["dsprites-loc"]
    assert "0.82x vpt-deep's tuned parameters" in said["digits"]


def test_e2vpt_minus_vpt_deep_is_a_welch_interval_over_seeds():
    from scipy import stats

    e2vpt, vpt = (0.951, 0.943, 0.948), (0.938, 0.944, 0.931, 0.940)
    diff, low, high = frontier.difference(e2vpt, vpt)
    reference = stats.ttest_ind(e2vpt, vpt, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(e2vpt) / 3 - sum(vpt) / 4)
    assert (low, high) == pytest.approx((reference.low, reference.high))
    same = frontier.difference((0.95, 0.95, 0.95), (0.94, 0.94, 0.94))  # no spread: no interval, not a certainty
    assert same[0] == pytest.approx(0.01) and all(v != v for v in same[1:])


def test_overlapping_intervals_are_called_no_significant_difference():
    import pandas as pd

    def table(e2vpt, vpt):
        return frontier.summary(pd.DataFrame([
            {"dataset": "digits", "method": m, "config": m, "seed": s, "round": 0, "final": True, "val_acc": a,
             "test_acc": a, "tuned_params": p, "tuned_pct": 1.0}
            for m, p, accs in (("e2vpt", 5000, e2vpt), ("vpt-deep", 4000, vpt)) for s, a in enumerate(accs)]))

    assert "no significant difference" in frontier.verdict(table((0.90, 0.94, 0.92), (0.91, 0.93, 0.92)))
    apart = frontier.verdict(table((0.95, 0.96, 0.97), (0.90, 0.905, 0.91)))
    assert "e2vpt minus vpt-deep: +5.5 points" in apart and "e2vpt ahead" in apart
    assert "with 1.25x vpt-deep's tuned parameters" in apart


@pytest.mark.parametrize("low, high", [(0.925, 0.9473), (0.2, 0.95), (0.9401, 0.9409), (0.5, 0.6), (0.93, 0.937)])
def test_every_accuracy_tick_label_names_its_own_value(low, high):
    from e2vpt.charts import percent_ticks

    values, labels = percent_ticks(low, high)
    assert 3 <= len(values) <= 9 and values == sorted(values)
    assert all(low - 1e-9 <= v <= high + 1e-9 for v in values)
    for value, label in zip(values, labels):
        assert label.endswith("%") and float(label[:-1]) == pytest.approx(100 * value, abs=1e-9), (value, label)
    assert len(set(labels)) == len(labels)


def running_sweep(root: Path, fake_run) -> SweepDir:
    """linear trials: s0 done in 100 s, s1 at 40 % with 30 s left (val 0.7 reported), s2 not started."""
    spec = SweepSpec.from_dict({"methods": ["linear"], "seeds": [0, 1, 2]})
    sweep = SweepDir(root / "R")
    record = sweep.create(spec, state="running")
    first, second, _ = record["trials"]
    fake_run(sweep.path, first, method="linear", test_acc=0.9, tuned_params=1930)
    summary = json.loads((sweep.path / first / "summary.json").read_text())
    (sweep.path / first / "summary.json").write_text(json.dumps(dict(summary, wall_s=100.0)))
    fake_run(sweep.path, second, method="linear", state="running")  # pid: this live process
    status = json.loads((sweep.path / second / "status.json").read_text())
    (sweep.path / second / "status.json").write_text(json.dumps(dict(status, remaining_s=30.0)))
    record["trials"][second].update(status="running", val_acc=0.7, epoch=2)
    sweep.write(record)
    return sweep


def test_a_sweep_driver_that_ended_is_not_left_defunct_once_the_app_looks_at_the_sweep(tmp_path, fake_run):
    import time

    from e2vpt import launch

    sweep = finished_sweep(tmp_path, fake_run)
    proc = launch._spawn_logged(tmp_path / "driver.log", ["settings"])  # a real child that ends at once

    def state() -> str | None:
        try:
            return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None  # collected: no such process any more

    deadline = time.monotonic() + 60
    while state() != "Z" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state() == "Z"  # it ended and nobody has collected it yet
    launch.open_sweep(sweep.id, tmp_path)
    assert state() is None


def test_a_running_sweep_shows_each_trials_progress_and_an_eta_from_measured_times(tmp_path, fake_run):
    from e2vpt.sweeps.store import eta

    sweep = running_sweep(tmp_path, fake_run)
    rows = {r["trial"]: r for r in sweep.rows()}
    done, running, waiting = rows.values()
    assert (done["progress"], running["progress"], waiting["progress"]) == (1.0, 0.4, 0.0)
    assert running["status"] == "running" and running["phase"] == "train round 0: epoch 2/2"
    assert running["val_acc"] == 0.7  # the latest reported while it runs, not None
    left = eta(list(rows.values()))
    assert left["seconds"] == pytest.approx(130.0) and not left["at_least"]  # 30 s + one more linear trial (100 s)
    assert eta([dict(waiting)])["seconds"] is None  # nothing measured: no number made up


def test_the_sweeps_page_shows_a_running_sweeps_progress_and_eta(roots, fake_run):
    runs, _ = roots
    sweep = running_sweep(runs, fake_run)
    holder = _hold_lock(sweep)
    try:
        at = open_page("app_pages/sweeps.py")
        no_exception(at)
        assert "running · 1 of 3 trials done" in texts(at, "caption")
        bar = at.get("progress")[0].proto
        assert abs(bar.value - 100 * 1.4 / 3) < 1 and "1 of 3 trials finished, 1 running; about 00:02:10 left" in bar.text
        table = at.dataframe[0].value
        assert list(table["phase"])[1] == "train round 0: epoch 2/2" and list(table["progress (%)"])[1] == 40
    finally:
        holder.kill()
        holder.wait()


def test_a_fresh_tab_opens_the_newest_run_not_a_sweep_trial_and_the_sidebar_tells_trials_apart(roots, fake_run):
    runs, _ = roots
    fake_run(runs, "20250101-000000-e2vpt-digits")
    finished_sweep(runs, fake_run)  # its trials are newer than the run
    at = open_page("app_pages/runs.py")
    no_exception(at)
    picker = at.sidebar.selectbox[0]
    assert picker.value == "20250101-000000-e2vpt-digits"
    shown = picker.options
    assert {"S/t002-vpt-deep-s0 · p=2 · digits", "S/t004-vpt-deep-s0 · p=8 · digits", "S/t000-linear-s0 · digits",
            "S/t006-e2vpt-s0 · p=4 l=1 · digits"} <= set(shown)


def test_the_sweeps_page_shows_the_frontier_and_opens_a_trial_on_every_page(roots, fake_run):
    runs, _ = roots
    finished_sweep(runs, fake_run)
    at = open_page("app_pages/sweeps.py")
    no_exception(at)
    assert not at.error, texts(at, "error")
    assert at.query_params["sweep"] == "S"
    assert charts_on(at) == 1  # the frontier; the parallel coordinates (WebGL, slow without a GPU) on request
    assert "digits: each method's final model" in texts(at, "info")
    at.toggle(key="sweep_parcoords").set_value(True).run()
    no_exception(at)
    assert charts_on(at) == 2
    # trial ids name only method and seed: the table and the picker add each trial's configuration
    assert {"t002-vpt-deep-s0 · vpt-deep p=2 · digits", "t004-vpt-deep-s0 · vpt-deep p=8 · digits",
            "t006-e2vpt-s0 · e2vpt · digits"} <= set(at.selectbox(key="sweep_trial").options)
    assert "vpt-deep p=8 · digits" in set(at.dataframe[-1].value["configuration"])
    at.selectbox(key="sweep_trial").set_value("t000-linear-s0").run()
    next(b for b in at.button if b.label == "Open on every page").click().run()
    no_exception(at)
    assert at.query_params["run"] == "S/t000-linear-s0"
    at.switch_page("app_pages/pruning.py").run()
    no_exception(at)
    assert at.sidebar.selectbox[0].value == "S/t000-linear-s0"


def test_starting_a_prepared_sweep_from_the_page_queues_one_driver(roots, fake_spawn):
    runs, _ = roots
    started = fake_spawn
    try:
        at = open_page("app_pages/sweeps.py")
        no_exception(at)
        assert "No sweeps yet" in texts(at, "info")
        assert "21 trials" in texts(at, "caption")  # class comparison: 3 linear + 12 VPT-deep + 6 E2VPT
        next(b for b in at.button if b.label == "Start sweep").click().run()
        no_exception(at)
        assert len(started) == 1 and started[0][1][:2] == ["sweep", "--out"]
        sweep = SweepDir(started[0][1][2])
        assert sweep.path.parent == runs and sweep.state() == "queued"
        assert at.query_params["sweep"] == sweep.id
        assert len(sweep.read()["trials"]) == 21
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait()
    assert SweepDir(started[0][1][2]).state() == "interrupted"  # its driver is gone: resumable, not "queued"


def test_compare_can_pick_one_sweeps_trials(roots, fake_run):
    runs, _ = roots
    sweep = finished_sweep(runs, fake_run, seeds=(0,))
    fake_run(runs, "20260101-000000-e2vpt-digits")
    at = open_page("app_pages/compare.py")
    no_exception(at)
    assert len(at.multiselect[0].value) == 1 + len(sweep.read()["trials"])
    at.selectbox(key="compare_sweep").set_value("S").run()
    no_exception(at)
    assert sorted(at.multiselect[0].value) == sorted(f"S/{t}" for t in sweep.read()["trials"])
    assert charts_on(at) == 1


def test_the_page_starts_the_pruning_search_and_prices_every_level_it_may_train(roots, fake_spawn):
    started = fake_spawn
    try:
        at = open_page("app_pages/sweeps.py")
        at.radio(key="sweep_kind").set_value("pruning search against pruning rounds").run()
        no_exception(at)
        # 3 seeds: the E2VPT trial pruned in rounds, its scout and 3 x 2 levels each (identical ones are trained once)
        assert "up to 24 trials" in texts(at, "caption")
        next(b for b in at.button if b.label == "Start sweep").click().run()
        no_exception(at)
        spec = SweepDir(started[0][1][2]).read()["spec"]
        assert spec["protocol"] == "e2vpt-search" and spec["seeds"] == [0, 1, 2]
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait()
