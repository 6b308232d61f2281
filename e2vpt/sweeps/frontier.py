"""The accuracy-per-parameter frontier of a sweep: what E2VPT's central claim looks like on your data.

A trial counts with the model it reports: for E2VPT, the pruning round its run kept on validation
(`selected_round`), never a round picked afterwards by its test accuracy. A point is one configuration
(method + swept values) of one dataset, those final models averaged over its seeds: mean test accuracy
with a 95 % t-interval, mean tuned parameters. Every E2VPT round may be drawn too (`final` is False,
the kept one included, averaged over all seeds): the trajectory shows what pruning did, and it never
enters the Pareto front or the verdict.

Datasets are never mixed: the front and the verdict are per dataset. The verdict takes, per method,
the configuration with the best mean *validation* accuracy, reports its test accuracy, and gives
E2VPT minus VPT-deep with a 95 % Welch interval over seeds and the ratio of their tuned parameters.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import RunDirError
from ..methods import REGISTRY
from .store import SweepDir

SHORT_NAMES = {"prompt_len": "p", "kv_len": "l", "lr": "lr", "weight_decay": "wd", "prune_ratio": "prune",
               "segment_ratio": "seg"}
NOT_A_SETTING = ("dataset",)  # one frontier per dataset: the dataset is not part of a configuration's label


def _settings_text(values: dict, names: dict | None = None) -> list[str]:
    """`name=value` for each swept setting (floats as %g), under `names` where given."""
    names = names or {}
    return [f"{names.get(k, k)}={v:g}" if isinstance(v, float) else f"{names.get(k, k)}={v}" for k, v in values.items()]


def config_label(method: str, values: dict) -> str:
    """A configuration as the frontier and the Sweeps page name it: `e2vpt p=8 l=4` (the dataset apart)."""
    settings = {k: v for k, v in values.items() if k not in NOT_A_SETTING}
    return " ".join([method, *_settings_text(settings, SHORT_NAMES)])


SEARCH_METHOD = "e2vpt-search"  # how the frontier names the pruning search's chosen levels
E2VPT_METHODS = (*[m.name for m in REGISTRY.values() if m.kv], SEARCH_METHOD)  # key-value prompts: E2VPT's


def prunes(method: str) -> bool:
    """Whether `method` (a registry row, or a name from an older sweep) prunes: its rounds are points."""
    return method in REGISTRY and REGISTRY[method].prune


POINT_COLUMNS = ["trial", "dataset", "method", "config", "seed", "round", "final", "val_acc", "test_acc",
                 "tuned_params", "tuned_pct"]


def trial_dataset(sweep: SweepDir, trial_id: str, record: dict, values: dict) -> str:
    """The trial's dataset: its run's config.json (the truth), else the spec's."""
    try:
        return str(sweep.trial_run(trial_id).config().get("dataset"))
    except RunDirError:
        spec = record.get("spec") or {}
        return str(values.get("dataset") or (spec.get("base") or {}).get("dataset") or "digits")


def points(sweep: SweepDir, every_round: bool = True) -> pd.DataFrame:
    """One row per finished trial's final model (`final` True), and with `every_round` one per E2VPT
    pruning round, the kept one included (`final` False: the trajectory, drawn but never counted):
    dataset, method, config label, seed, round, val_acc, test_acc, tuned_params, tuned_pct. Under
    protocol vpt, once final trials have finished, only they are points: the search trials chose them
    on validation accuracy. Under protocol e2vpt-search, each scout's chosen level is a point of method
    `e2vpt-search` (its configuration without the levels, which the search picked per seed); scouts
    and the other levels are not."""
    record = sweep.read()
    finished = [row for row in sweep.rows(record) if row["status"] == "done"]
    if any(row["stage"] == "final" for row in finished):
        finished = [row for row in finished if row["stage"] == "final"]
    finished = [row for row in finished if row["stage"] not in ("scout", "levels") or row["chosen"]]
    rows = []
    for row in finished:
        trial = record["trials"][row["trial"]]
        values, method = trial.get("values") or {}, row["method"]
        if row["stage"] == "levels":
            values = {k: v for k, v in values.items() if k not in ("prune_ratio", "segment_ratio")}
            method = SEARCH_METHOD
        base = {"trial": row["trial"], "dataset": trial_dataset(sweep, row["trial"], record, values), "method": method,
                "config": config_label(method, values), "seed": row["seed"]}
        rows.append({**base, "round": row["selected_round"], "final": True, "val_acc": row["val_acc"],
                     "test_acc": row["test_acc"], "tuned_params": row["tuned_params"], "tuned_pct": row["tuned_pct"]})
        if every_round and prunes(method):
            pruning = sweep.trial_run(row["trial"]).pruning() or {}
            rows += [{**base, "round": r["round"], "final": False, "val_acc": r.get("val_acc"),
                      "test_acc": r["test_acc"], "tuned_params": r["tuned_params"], "tuned_pct": r.get("tuned_pct")}
                     for r in pruning.get("rounds", []) if r.get("test_acc") is not None]
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


SUMMARY_COLUMNS = ["dataset", "method", "config", "round", "final", "label", "seeds", "test_acc", "test_ci",
                   "test_std", "test_values", "val_acc", "tuned_params", "tuned_pct", "pareto"]


def _mean_point(part: pd.DataFrame) -> dict:
    accs = part["test_acc"].astype(float)
    n = len(accs)
    std = float(accs.std(ddof=1)) if n > 1 else float("nan")
    return {"seeds": n, "test_acc": float(accs.mean()),
            "test_ci": float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan"),
            "test_std": std, "test_values": tuple(accs), "val_acc": float(part["val_acc"].astype(float).mean()),
            "tuned_params": float(part["tuned_params"].astype(float).mean()),
            "tuned_pct": float(part["tuned_pct"].astype(float).mean())}


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Points averaged over seeds, per dataset: each configuration's final models (`final`: the round
    each seed's run kept, `round` the most common of them), and each drawn E2VPT round (`final`
    False); mean and 95 % half-interval of test accuracy, mean validation accuracy and tuned
    parameters, and whether a final point is on its dataset's Pareto front."""
    if frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows = []
    for (dataset, method, config), part in frame.groupby(["dataset", "method", "config"], sort=False):
        finals = part[part["final"].astype(bool)]
        if not finals.empty:
            kept = sorted(int(r) for r in finals["round"].dropna())
            pruned = prunes(method) and bool(kept)
            label = f"{config}, kept round{'s' if len(set(kept)) > 1 else ''} " \
                    f"{'/'.join(str(r) for r in sorted(set(kept)))}" if pruned else config
            rows.append({"dataset": dataset, "method": method, "config": config,
                         "round": max(set(kept), key=kept.count) if kept else None, "final": True, "label": label,
                         **_mean_point(finals), "pareto": False})
        for rnd, drawn in part[~part["final"].astype(bool)].groupby("round", sort=True):
            rows.append({"dataset": dataset, "method": method, "config": config, "round": int(rnd), "final": False,
                         "label": f"{config} round {int(rnd)}, every seed (drawn, not counted)",
                         **_mean_point(drawn), "pareto": False})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for _, part in out[out["final"]].groupby("dataset", sort=False):
        best_so_far = -math.inf
        for i in part.sort_values(["tuned_params", "test_acc"], ascending=[True, False]).index:
            if out.at[i, "test_acc"] > best_so_far:
                out.at[i, "pareto"] = True
                best_so_far = out.at[i, "test_acc"]
    return out


def datasets(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["dataset"])) if not table.empty else []


def chosen(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Each method's configuration on `dataset` with the best mean validation accuracy (ties: fewer
    tuned parameters; a configuration without validation accuracy ranks last), its final models only."""
    finals = table[table["final"] & (table["dataset"] == dataset)].copy()
    finals["_val"] = pd.to_numeric(finals["val_acc"], errors="coerce").fillna(-math.inf)
    finals = finals.sort_values(["_val", "tuned_params"], ascending=[False, True])
    return finals.groupby("method", sort=False).head(1).drop(columns="_val").sort_values("test_acc", ascending=False)


def difference(a: tuple, b: tuple) -> tuple[float, float, float]:
    """Mean of `a` minus mean of `b`, with the 95 % Welch t-interval (nan without two values each, or
    without any spread)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se < 1e-12:  # identical accuracies on every seed (up to float noise): no spread to build an interval from
        return diff, float("nan"), float("nan")
    dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1)) + (vb ** 2 / (len(b) - 1)))
    half = float(stats.t.ppf(0.975, dof) * se)
    return diff, diff - half, diff + half


def _point_text(r) -> str:
    spread = f" ± {100 * r.test_ci:.1f}" if not math.isnan(r.test_ci) else ""
    return f"{r.label}: {100 * r.test_acc:.1f}{spread} % at {r.tuned_params:,.0f} parameters"


def _comparison(ours, theirs) -> str:
    diff, low, high = difference(ours.test_values, theirs.test_values)
    ratio = ours.tuned_params / theirs.tuned_params if theirs.tuned_params else float("nan")
    text = f"{ours.method} minus {theirs.method}: {round(100 * diff, 1) + 0.0:+.1f} points"  # + 0.0: never "-0.0"
    if math.isnan(low):
        reason = "one seed" if min(len(ours.test_values), len(theirs.test_values)) < 2 else \
            "the seeds gave identical accuracies"
        text += f" ({reason}: no interval; run more seeds before calling a winner)"
    else:
        sure = "no significant difference" if low <= 0 <= high else \
            (f"{ours.method} ahead" if low > 0 else f"{theirs.method} ahead")
        text += f" (95 % interval {100 * low:+.1f} to {100 * high:+.1f}, Welch, over seeds: {sure})"
    return text + f", with {ratio:.2f}x {theirs.method}'s tuned parameters"


def verdicts(table: pd.DataFrame) -> dict[str, str]:
    """Per dataset, what its frontier shows: each method's final model (configuration chosen on
    validation, rounds kept on validation) with its test accuracy, then E2VPT against VPT-deep (or
    against the best other method when VPT-deep is absent)."""
    out = {}
    for dataset in datasets(table):
        best = chosen(table, dataset)
        if best.empty:
            continue
        many = best["seeds"].max() > 1
        text = (f"{dataset}: each method's final model (rounds kept and configuration chosen on validation), "
                f"test accuracy{', 95 % interval over seeds' if many else ''}: "
                + "; ".join(_point_text(r) for r in best.itertuples()) + ".")
        others = [r for r in best.itertuples() if r.method not in E2VPT_METHODS]
        reference = next((r for r in others if r.method == "vpt-deep"), None) or \
            max(others, key=lambda r: (r.val_acc if not math.isnan(r.val_acc) else -math.inf), default=None)
        ours = [r for r in best.itertuples() if prunes(r.method) or r.method == SEARCH_METHOD]
        if reference is not None and ours:
            text += " " + "; ".join(_comparison(r, reference) for r in ours) + "."
        elif not many:
            text += " With one seed there is no interval: run more seeds (--seeds 0 1 2) before calling a winner."
        out[dataset] = text
    return out


def verdict(table: pd.DataFrame) -> str:
    """Every dataset's verdict (`verdicts`), one after the other."""
    if table.empty or not table["final"].any():
        return "No finished trials yet."
    return " ".join(verdicts(table).values())


def protocol_note(record: dict, rows: list[dict]) -> str:
    """What a protocol-vpt sweep did, in words: which configuration each method's search chose and what
    the frontier shows. Empty for a sweep without a protocol."""
    spec = record.get("spec") or {}
    if spec.get("protocol", "none") == "e2vpt-search":
        return _search_note(rows)
    if spec.get("protocol", "none") != "vpt":
        return ""
    search = [r for r in rows if r["stage"] == "search"]
    finals = [r for r in rows if r["stage"] == "final"]
    text = (f"VPT protocol: {len(search)} search trial(s) on the train split, judged on validation accuracy "
            "(never on test)")
    if not finals:
        return text + "; each method's best is then retrained on train + val, and the chart shows those final trials " \
                      "once they have finished. Until then it shows the search."
    chosen = {}
    for r in finals:
        values = (record["trials"].get(r["trial"]) or {}).get("values") or {}
        chosen.setdefault(r["method"], ", ".join(_settings_text(values)) or "its only configuration")
    seeds = sorted({r["seed"] for r in finals})
    return (text + " chose " + "; ".join(f"{m}: {c}" for m, c in chosen.items()) + f". The chart shows the final "
            f"trials: each choice retrained on train + val with seeds {', '.join(map(str, seeds))}, test accuracy.")


def _search_note(rows: list[dict]) -> str:
    """What protocol e2vpt-search did and what it cost, beside the iterative rounds of the same configuration."""
    scouts = [r for r in rows if r["stage"] == "scout"]
    levels = [r for r in rows if r["stage"] == "levels"]
    done = [r for r in levels if r["status"] == "done"]
    seconds = lambda part: sum(r["wall_s"] or 0 for r in part)  # noqa: E731
    text = (f"E2VPT pruning search (official schedule, E2VPT-SPEC.md section 4): phase 0 trained and scored once "
            f"per configuration and seed ({len(scouts)} run(s), {seconds(scouts):.0f} s), then "
            f"{len(levels)} pruning level(s) (share of tokens x share of segments pruned) each retrained from that "
            f"shared state ({len(done)} finished, {seconds(done):.0f} s)")
    chosen = [r for r in levels if r["chosen"]]
    if not chosen:
        return text + "; the level with the best validation accuracy is chosen once they have finished."
    picks = "; ".join(f"{r['phase0_from']}: {r['trial'].removeprefix(r['phase0_from'] + '-')} (val "
                      f"{100 * r['val_acc']:.1f} %, test {100 * r['test_acc']:.1f} %, {r['tuned_params']:,} parameters)"
                      for r in chosen)
    iterative = [r for r in rows if r["stage"] == "grid" and prunes(r["method"]) and r["status"] == "done"]
    budget = (f" The iterative rounds (e2vpt) cost {seconds(iterative) / len(iterative):.0f} s per trial, against "
              f"{(seconds(scouts) + seconds(done)) / max(len(scouts), 1):.0f} s per search." if iterative else "")
    return (text + f". Chosen on validation accuracy (ties to more pruning; t = tokens pruned %, g = segments "
            f"pruned %): {picks}; on the chart as {SEARCH_METHOD}." + budget)
