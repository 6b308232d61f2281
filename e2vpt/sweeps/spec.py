"""A sweep's specification and the trials it expands to.

A spec names a base configuration, the methods to compare, a grid (every combination) and/or random
draws over any `TrainConfig` setting, and the seeds. It is written as YAML or JSON, or built from the
`python -m e2vpt sweep` flags, and checked whole before anything runs: an unknown setting or method,
an empty grid or a value out of bounds is one line naming it.

Expansion is deterministic (random draws use the spec's own `search_seed`), so the same spec always
gives the same trials with the same ids; that is what lets a sweep folder be resumed. A swept setting
that a method does not use (the prompt length of a linear probe, the pruning ratios of VPT) is left at
its default for that method, and trials that end up identical are run once.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..config import PRUNING_ONLY, TrainConfig, kind, meta, settings
from ..errors import ConfigError
from ..methods import METHODS, method_named

SCHEDULERS = ("fifo", "asha")
# none: every trial is reported as it is; vpt: VPT's protocol (Jia et al. 2022, section 4.1): the grid is a
# search judged on validation accuracy, then each method's best configuration is trained again on
# train + val with `final_seeds` and reported on test; e2vpt-search: the official pruning search
# (docs/E2VPT-SPEC.md section 4) beside the grid's own trials, whose iterative rounds it is compared with
PROTOCOLS = ("none", "vpt", "e2vpt-search")
# the official code's candidate levels: 10 %, ..., 90 % of the tokens, and of each token's segments (it
# never keeps fewer than 1 token or 4 of 16 segments; levels that keep the same counts are trained once)
OFFICIAL_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# the protocol's search grid when the spec sweeps neither lr nor weight_decay: VPT's own for SGD, and
# the same span around the demo's AdamW default for AdamW
VPT_GRID = {"sgd": {"lr": [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05],
                    "weight_decay": [0.01, 0.001, 0.0001, 0.0]},
            "adamw": {"lr": [0.003, 0.01, 0.03], "weight_decay": [0.0, 1e-4, 1e-2]}}
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# settings a sweep sets itself: the seed comes from `seeds`, the method from `methods`
SWEEP_OWNED = ("method", "seed")
MAX_TRIALS = 10_000


def _setting_names() -> list[str]:
    return [f.name for f in settings()]


def check_setting_name(name: str, where: str) -> str:
    """`name` (dashes allowed) as a `TrainConfig` setting; a one-line error with the closest names otherwise."""
    name = str(name).replace("-", "_")
    names = _setting_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; `python -m e2vpt settings` lists them"
        raise ConfigError(f"unknown setting {name!r} in the sweep's {where}{hint}")
    if name in SWEEP_OWNED:
        flag = "--methods" if name == "method" else "--seeds"
        raise ConfigError(f"{name} is set by the sweep's {flag}, not in its {where}")
    return name


def check_method(name: str) -> str:
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method {name!r} in the sweep; choose from {', '.join(METHODS)}{hint}")
    return name


def unused_settings(method: str) -> set[str]:
    """Settings `method` does not read: a sweep leaves them at their defaults for it (so a linear probe
    is not trained four times for four prompt lengths)."""
    spec = method_named(method)
    unused = set()
    if spec.visual == "none":
        unused |= {"prompt_len", "prompt_dropout"}
    if spec.visual == "none" or not spec.kv:
        unused |= {"kv_len", "kv_shared"}
    if not spec.prune:
        unused |= {f.name for f in settings() if meta(f)["group"] == "pruning"}
    if not spec.prune:
        unused.add("retrain_epochs")
    return unused


def parse_value(name: str, text: str) -> Any:
    """A value typed on the command line, converted to the setting's type (`none` for unset)."""
    f = next(f for f in settings() if f.name == name)
    base, _, optional = kind(f)
    text = text.strip()
    if optional and text.lower() in ("none", "null", "unset"):
        return None
    if base is bool:
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{name} takes true or false, got {text!r}")
    if base in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{name} takes a number, got {text!r}") from None
        return int(number) if base is int and number.is_integer() else number  # the config refuses 2.5 layers
    return text


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["lr=0.01,0.03", "prompt_len=1,2"]` -> `{"lr": [0.01, 0.03], "prompt_len": [1, 2]}`."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            raise ConfigError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        name = check_setting_name(name.strip(), "grid")
        grid[name] = [parse_value(name, v) for v in values.split(",") if v.strip()]
    return grid


def parse_random(items: list[str]) -> dict[str, dict]:
    """`["lr=loguniform:1e-3:1e-1", "prompt_len=choice:1:2:4"]` -> the spec's `random` mapping."""
    out: dict[str, dict] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        dist, _, args = rest.partition(":")
        if not sep or dist not in DISTRIBUTIONS:
            raise ConfigError(f"--random takes NAME=DIST:A:B with DIST one of {', '.join(DISTRIBUTIONS)}, got {item!r}")
        name = check_setting_name(name.strip(), "random search")
        values = [parse_value(name, v) for v in args.split(":") if v.strip()]
        out[name] = {dist: values}
    return out


@dataclass
class Trial:
    """One training of the sweep: its id (the run folder's name), full config and what it varies."""

    id: str
    config: dict
    method: str
    seed: int
    values: dict  # the swept settings' values for this trial (unused ones left out)
    # search: the spec's own trials (grid under protocol e2vpt-search, where the levels are the search);
    # final: protocol vpt's retraining of the chosen configuration; scout and levels: protocol
    # e2vpt-search's shared phase 0, and each pruning level trained from it
    stage: str = "search"
    phase0_from: str | None = None  # levels: the scout trial whose phase 0 (and scores) it starts from


@dataclass
class SweepSpec:
    """What a sweep trains.

    Args:
        base: settings every trial shares (any `TrainConfig` field but method and seed).
        methods: methods to compare; each gets every grid point. A mapping gives a method its own
            `grid`/`base` on top of the shared ones (e.g. VPT-deep over prompt lengths, E2VPT over (p, l)).
        grid: setting -> values; every combination is a trial.
        random: setting -> {distribution: [args]}; `samples` draws (uniform/loguniform: low, high;
            randint: low, high inclusive; choice: the values).
        samples: random draws per method (only with `random`).
        seeds: each configuration is trained once per seed.
        scheduler: fifo (every trial runs to the end) or asha (stops trials behind on validation accuracy).
        search_seed: seeds the random draws, so the same spec always gives the same trials.
        name: a label shown in the app.
        protocol: none, or vpt: the trials above are a search judged on validation accuracy (lr x weight
            decay by default), then each method's best configuration is trained on train + val once per
            `final_seeds` and those final trials are what the sweep reports (test mean and spread).
        final_seeds: the seeds of the final trials (protocol vpt).
        token_levels, segment_levels: protocol e2vpt-search's candidate pruning levels, as shares of the
            tokens and of the segments pruned in one round; every pair is a trial (official: 10 %, ..., 90 %).
    """

    base: dict = field(default_factory=dict)
    methods: list | dict = field(default_factory=lambda: ["e2vpt"])
    grid: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    samples: int = 0
    seeds: list = field(default_factory=lambda: [0])
    scheduler: str = "fifo"
    search_seed: int = 0
    name: str = ""
    protocol: str = "none"
    final_seeds: list = field(default_factory=lambda: [0, 1, 2])
    token_levels: list = field(default_factory=lambda: list(OFFICIAL_LEVELS))
    segment_levels: list = field(default_factory=lambda: list(OFFICIAL_LEVELS))

    def __post_init__(self) -> None:
        self.base = self._checked_base(self.base, "base settings")
        self.methods = self._checked_methods(self.methods)
        self.grid = self._checked_grid(self.grid, "grid")
        self.random = self._checked_random(self.random)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        self.final_seeds = self._checked_seeds(self.final_seeds, "final_seeds", "--final-seeds")
        if self.protocol == "vpt":
            self._protocol_search_grid()
        self.token_levels = self._checked_levels(self.token_levels, "token_levels", "--token-levels")
        self.segment_levels = self._checked_levels(self.segment_levels, "segment_levels", "--segment-levels")
        if self.protocol == "e2vpt-search":
            if not any(method_named(m).prune for m in self.methods):
                raise ConfigError("protocol e2vpt-search searches E2VPT's pruning levels; add e2vpt to the methods")
            if self.scheduler == "asha":
                raise ConfigError("protocol e2vpt-search trains every pruning level to its end, as the official code "
                                  "does; use --scheduler fifo")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 0 <= self.samples <= MAX_TRIALS:
            raise ConfigError(f"samples must be a whole number from 0 to {MAX_TRIALS}, got {self.samples!r}")
        if self.random and not self.samples:
            raise ConfigError("the sweep has a random search but samples is 0; give --samples N")
        self.seeds = self._checked_seeds(self.seeds, "seeds", "--seeds")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not isinstance(self.name, str):
            raise ConfigError("name must be text")
        self.trials()  # every trial's config checked now, before anything runs

    # -- checks -------------------------------------------------------------------------------------
    @staticmethod
    def _checked_seeds(seeds: Any, name: str, flag: str) -> list:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"the sweep needs at least one seed in {name} ({flag} 0 1 2)")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
                raise ConfigError(f"{name} must be whole numbers from 0 to 4294967295, got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{name} {seeds} repeat a seed")
        return seeds

    @staticmethod
    def _checked_levels(levels: Any, name: str, flag: str) -> list:
        if not isinstance(levels, list) or not levels:
            raise ConfigError(f"the sweep needs at least one level in {name} ({flag} 0.25 0.5 0.75)")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level < 1:
                raise ConfigError(f"{name} are shares pruned in one round, from 0 up to (not including) 1; got {level!r}")
        if len(set(levels)) != len(levels):
            raise ConfigError(f"{name} {levels} repeat a level")
        return [float(level) for level in levels]

    def _protocol_search_grid(self) -> None:
        """VPT's protocol searches on the train split: the final trials alone train on train + val. With
        nothing about lr or weight decay swept, the search is VPT's lr x weight decay grid."""
        swept = set(self.grid) | set(self.random)
        for own in self.methods.values():
            swept |= set(own["grid"])
        every_base = [self.base, *(own["base"] for own in self.methods.values())]
        if "train_on" in swept or any(b.get("train_on", "train") != "train" for b in every_base):
            raise ConfigError("protocol vpt searches on the train split and trains its final trials on train + val "
                              "itself; leave train_on out of the sweep")
        if not swept & {"lr", "weight_decay"}:
            optimizer = self.base.get("optimizer", "adamw")
            self.grid = {**self.grid, **VPT_GRID.get(optimizer, VPT_GRID["adamw"])}

    @staticmethod
    def _checked_base(values: Any, where: str) -> dict:
        if not isinstance(values, dict):
            raise ConfigError(f"the sweep's {where} must be a mapping of settings, not {type(values).__name__}")
        return {check_setting_name(k, where): v for k, v in values.items()}

    def _checked_methods(self, methods: Any) -> dict:
        if isinstance(methods, str):
            methods = [methods]
        if isinstance(methods, list):
            methods = {m: {} for m in methods}
        if not isinstance(methods, dict) or not methods:
            raise ConfigError("the sweep needs at least one method (--methods linear vpt-deep e2vpt)")
        out = {}
        for name, own in methods.items():
            check_method(name)
            own = own or {}
            if not isinstance(own, dict) or set(own) - {"grid", "base"}:
                raise ConfigError(f"method {name} in the sweep takes only `grid` and `base`, got {own!r}")
            out[name] = {"grid": self._checked_grid(own.get("grid", {}), f"grid for {name}"),
                         "base": self._checked_base(own.get("base", {}), f"base settings for {name}")}
        return out

    @staticmethod
    def _checked_grid(grid: Any, where: str) -> dict:
        if not isinstance(grid, dict):
            raise ConfigError(f"the sweep's {where} must map settings to lists of values")
        out = {}
        for name, values in grid.items():
            name = check_setting_name(name, where)
            if not isinstance(values, list):
                values = [values]
            if not values:
                raise ConfigError(f"the sweep's {where} gives {name} no values; give at least one")
            out[name] = values
        return out

    @staticmethod
    def _checked_random(space: Any) -> dict:
        if not isinstance(space, dict):
            raise ConfigError("the sweep's random search must map settings to {distribution: [arguments]}")
        out = {}
        for name, dist in space.items():
            name = check_setting_name(name, "random search")
            if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ConfigError(f"random search over {name} needs one of {', '.join(DISTRIBUTIONS)}, e.g. "
                                  f"{{loguniform: [0.001, 0.1]}}, got {dist!r}")
            kind_, args = next(iter(dist.items()))
            args = list(args) if isinstance(args, (list, tuple)) else [args]
            if kind_ == "choice" and not args:
                raise ConfigError(f"random search over {name}: choice needs at least one value")
            if kind_ != "choice":
                ok = (len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                                             for a in args) and args[0] <= args[1])
                if not ok or (kind_ == "loguniform" and args[0] <= 0):
                    raise ConfigError(f"random search over {name}: {kind_} needs [low, high] with low <= high"
                                      + (" and low > 0" if kind_ == "loguniform" else "") + f", got {args!r}")
            out[name] = {kind_: args}
        return out

    # -- expansion ----------------------------------------------------------------------------------
    def points(self, method: str) -> list[dict]:
        """The swept values of every configuration `method` trains (before seeds), duplicates removed."""
        own = self.methods[method]
        grid = {**self.grid, **own["grid"]}
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
        if self.random:
            rng = random.Random(f"{self.search_seed}-{method}")
            draws = [{name: _draw(rng, dist) for name, dist in self.random.items()} for _ in range(self.samples)]
            combos = [{**c, **d} for c in combos for d in draws]
        unused = unused_settings(method)
        points, seen = [], set()
        for combo in combos:
            point = {k: v for k, v in combo.items() if k not in unused}
            key = json.dumps(point, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                points.append(point)
        return points

    def _config(self, method: str, point: dict, seed: int, **fixed) -> dict:
        """The full, checked training config of `method` at `point` with `seed` (and `fixed` on top); a
        value no trial could train with is one line naming the trial."""
        values = {**self.base, **self.methods[method]["base"], **point, "method": method, "seed": seed, **fixed}
        try:
            config = TrainConfig.from_dict(values).to_dict()
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"{exc} (trial {method}" + (f" with {where}" if where else "") + ")",
                              exc.setting) from None
        config.pop("extra", None)
        return config

    def trials(self) -> list[Trial]:
        """Every trial, in a fixed order: methods as given, then configurations, then seeds."""
        trials, stage = [], "grid" if self.protocol == "e2vpt-search" else "search"
        for method in self.methods:
            for point in self.points(method):
                for seed in self.seeds:
                    trials.append(Trial(id=f"t{len(trials):03d}-{method}-s{seed}",
                                        config=self._config(method, point, seed), method=method, seed=seed,
                                        values=point, stage=stage))
                    if len(trials) > MAX_TRIALS:
                        raise ConfigError(f"the sweep expands to more than {MAX_TRIALS} trials; narrow the grid")
        return trials

    def best_points(self, val_acc: dict[str, float]) -> dict[str, dict]:
        """Each method's configuration with the highest mean validation accuracy over its seeds, from
        `val_acc` (search trial id -> accuracy, finished trials only); ties go to the earlier one.
        A method none of whose trials finished is left out."""
        means: dict[str, dict] = {}
        for trial in self.trials():
            if trial.id in val_acc and val_acc[trial.id] is not None:
                key = json.dumps(trial.values, sort_keys=True, default=str)
                means.setdefault(trial.method, {}).setdefault(key, (trial.values, []))[1].append(val_acc[trial.id])
        return {method: max(configs.values(), key=lambda item: sum(item[1]) / len(item[1]))[0]
                for method, configs in means.items()}

    def final_trials(self, chosen: dict[str, dict]) -> list[Trial]:
        """The protocol's final trials: each method's chosen configuration trained on train + val, once per
        final seed; ids `f000-<method>-s<seed>`, in the order of the spec's methods."""
        trials = []
        for method in self.methods:
            if method not in chosen:
                continue
            for seed in self.final_seeds:
                trials.append(Trial(id=f"f{len(trials):03d}-{method}-s{seed}",
                                    config=self._config(method, chosen[method], seed, train_on="train+val"),
                                    method=method, seed=seed, values=dict(chosen[method]), stage="final"))
        return trials

    def scout_trials(self) -> list[Trial]:
        """Protocol e2vpt-search: one phase 0 per pruning configuration and seed, scored once after it.
        Configurations that differ only in pruning settings share a scout; ids `p000-<method>-s<seed>`."""
        trials, seen = [], set()
        for method in self.methods:
            if not method_named(method).prune:
                continue
            for point in self.points(method):
                phase0 = {k: v for k, v in point.items() if k not in PRUNING_ONLY}
                for seed in self.seeds:
                    key = json.dumps([method, phase0, seed], sort_keys=True, default=str)
                    if key in seen:
                        continue
                    seen.add(key)
                    trials.append(Trial(id=f"p{len(trials):03d}-{method}-s{seed}",
                                        config=self._config(method, phase0, seed, prune_rounds=0), method=method,
                                        seed=seed, values=phase0, stage="scout"))
        return trials

    def level_trials(self, scout: Trial, token_shape: tuple[int, int], segments: int) -> list[Trial]:
        """Protocol e2vpt-search: every (token level, segment level) pair, one pruning round from `scout`'s
        phase 0, for a prompt of `token_shape` (prompt layers, p) with `segments` per token (the scout's
        model). Pairs that would keep the same number of tokens and segments as an earlier pair, or prune
        nothing, are left out. Ids `<scout>-t<token %>-g<segment %>`."""
        from ..models.pruning import kept_after  # torch: only the driver of such a sweep needs it

        config = TrainConfig.from_dict(scout.config)
        seen = {(token_shape[0] * token_shape[1], token_shape[0] * token_shape[1] * segments)}  # nothing pruned
        trials = []
        for token_level in self.token_levels:
            for segment_level in self.segment_levels:
                kept = kept_after(token_shape, segments, token_level, segment_level, config.mask_scope,
                                  config.segment_rank == "per-token", config.prune_count)
                if kept in seen:
                    continue
                seen.add(kept)
                values = {**scout.values, "prune_ratio": token_level, "segment_ratio": segment_level}
                trials.append(Trial(id=f"{scout.id}-t{100 * token_level:g}-g{100 * segment_level:g}",
                                    config=self._config(scout.method, values, scout.seed, prune_rounds=1),
                                    method=scout.method, seed=scout.seed, values=values, stage="levels",
                                    phase0_from=scout.id))
        return trials

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> "SweepSpec":
        if not isinstance(values, dict):
            raise ConfigError(f"a sweep spec must be a mapping, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the sweep spec; it takes {', '.join(sorted(known))} "
                              "(training settings go under `base`)")
        return cls(**values)


def _draw(rng: random.Random, dist: dict) -> Any:
    kind_, args = next(iter(dist.items()))
    if kind_ == "choice":
        return rng.choice(args)
    low, high = args
    if kind_ == "uniform":
        return rng.uniform(low, high)
    if kind_ == "loguniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.randint(int(low), int(high))
