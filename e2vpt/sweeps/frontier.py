"""The accuracy-per-parameter frontier of a sweep: what E2VPT's central claim looks like on your data.

A point is one configuration (method + swept values, and for E2VPT one pruning round) averaged over
its seeds: mean test accuracy with a 95 % t-interval, mean tuned parameters. The Pareto front holds
the points no other point beats with as few or fewer parameters. The verdict compares the best point
of each method and says "no significant difference" when their intervals overlap, and says so too
when one seed gives no interval at all.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from .store import SweepDir


SHORT_NAMES = {"prompt_len": "p", "kv_len": "l", "lr": "lr", "weight_decay": "wd", "prune_ratio": "prune",
               "segment_ratio": "seg"}


def _settings_text(values: dict, names: dict | None = None) -> list[str]:
    """`name=value` for each swept setting (floats as %g), under `names` where given."""
    names = names or {}
    return [f"{names.get(k, k)}={v:g}" if isinstance(v, float) else f"{names.get(k, k)}={v}" for k, v in values.items()]


def _label(method: str, values: dict) -> str:
    return " ".join([method, *_settings_text(values, SHORT_NAMES)])


SEARCH_METHOD = "e2vpt-search"  # how the frontier names the pruning search's chosen levels


def points(sweep: SweepDir, every_round: bool = True) -> pd.DataFrame:
    """One row per finished trial (and, with `every_round`, per E2VPT pruning round): method, config
    label, seed, round, val_acc, test_acc, tuned_params, tuned_pct. Under protocol vpt, once final
    trials have finished, only they are points: the search trials chose them on validation accuracy.
    Under protocol e2vpt-search, each scout's chosen level is a point of method `e2vpt-search` (its
    configuration without the levels, which the search picked per seed); scouts and the other levels
    are not (a scout is the round 0 its configuration's iterative e2vpt trial already shows)."""
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
        label = _label(method, values)
        base = {"trial": row["trial"], "method": method, "config": label, "seed": row["seed"]}
        rounds = []
        if every_round and method == "e2vpt":
            pruning = sweep.trial_run(row["trial"]).pruning() or {}
            rounds = [r for r in pruning.get("rounds", []) if r.get("test_acc") is not None]
        if rounds:
            for r in rounds:
                rows.append({**base, "round": r["round"], "val_acc": r.get("val_acc"), "test_acc": r["test_acc"],
                             "tuned_params": r["tuned_params"], "tuned_pct": r.get("tuned_pct")})
        else:
            rows.append({**base, "round": row["selected_round"], "val_acc": row["val_acc"],
                         "test_acc": row["test_acc"], "tuned_params": row["tuned_params"], "tuned_pct": row["tuned_pct"]})
    return pd.DataFrame(rows, columns=["trial", "method", "config", "seed", "round", "val_acc", "test_acc",
                                       "tuned_params", "tuned_pct"])


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Points averaged over seeds: mean and 95 % half-interval of test accuracy, mean tuned parameters,
    and whether the point is on the Pareto front (fewer parameters, higher accuracy)."""
    columns = ["method", "config", "round", "label", "seeds", "test_acc", "test_ci", "test_std", "val_acc",
               "tuned_params", "tuned_pct", "pareto"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (method, config, rnd), part in frame.groupby(["method", "config", "round"], sort=False, dropna=False):
        accs = part["test_acc"].astype(float)
        n = len(accs)
        std = float(accs.std(ddof=1)) if n > 1 else float("nan")
        ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
        pruned = method == "e2vpt" and frame[(frame["config"] == config)]["round"].nunique() > 1
        rows.append({"method": method, "config": config, "round": rnd,
                     "label": f"{config} round {int(rnd)}" if pruned else config, "seeds": n,
                     "test_acc": float(accs.mean()), "test_ci": ci, "test_std": std,
                     "val_acc": float(part["val_acc"].astype(float).mean()),
                     "tuned_params": float(part["tuned_params"].astype(float).mean()),
                     "tuned_pct": float(part["tuned_pct"].astype(float).mean()), "pareto": False})
    out = pd.DataFrame(rows, columns=columns)
    best_so_far = -math.inf
    for i in out.sort_values(["tuned_params", "test_acc"], ascending=[True, False]).index:
        if out.at[i, "test_acc"] > best_so_far:
            out.at[i, "pareto"] = True
            best_so_far = out.at[i, "test_acc"]
    return out


def verdict(table: pd.DataFrame) -> str:
    """One sentence on what the frontier shows: each method's best point, and whether E2VPT's best
    differs from the others' beyond the seeds' spread."""
    if table.empty:
        return "No finished trials yet."
    best = table.loc[table.groupby("method")["test_acc"].idxmax()].sort_values("test_acc", ascending=False)

    def point(r) -> str:
        spread = f" ± {100 * r.test_ci:.1f}" if not math.isnan(r.test_ci) else ""
        return f"{r.method} {100 * r.test_acc:.1f}{spread} % at {r.tuned_params:,.0f} parameters"

    text = "Best of each method (test accuracy" + (", 95 % interval over seeds" if best["seeds"].max() > 1 else "") + \
           "): " + "; ".join(point(r) for r in best.itertuples()) + "."
    if len(best) < 2:
        return text
    if best["seeds"].min() < 2:
        return text + " With one seed there is no interval: run more seeds (--seeds 0 1 2) before calling a winner."
    top, rest = best.iloc[0], best.iloc[1:]
    tied = [r.method for r in rest.itertuples() if top.test_acc - top.test_ci <= r.test_acc + r.test_ci]
    if tied:
        return text + f" {top.method} against {', '.join(tied)}: no significant difference (the intervals overlap)."
    cheaper = [r.method for r in rest.itertuples() if r.tuned_params < top.tuned_params]
    more = f"; {', '.join(cheaper)} tune fewer parameters" if cheaper else ""
    return text + f" {top.method} is ahead of every other method beyond the seeds' spread{more}."


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
    iterative = [r for r in rows if r["stage"] == "grid" and r["method"] == "e2vpt" and r["status"] == "done"]
    budget = (f" The iterative rounds (e2vpt) cost {seconds(iterative) / len(iterative):.0f} s per trial, against "
              f"{(seconds(scouts) + seconds(done)) / max(len(scouts), 1):.0f} s per search." if iterative else "")
    return (text + f". Chosen on validation accuracy (ties to more pruning; t = tokens pruned %, g = segments "
            f"pruned %): {picks}; on the chart as {SEARCH_METHOD}." + budget)
