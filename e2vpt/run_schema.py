"""The run folder's records, declared once: every JSON file (and metrics line) a run writes, its keys,
their types and what they mean.

Why one declaration: the trainer writes these files, `runs.py` and the app read them, the docs
describe them and the tests fake them. Written out four times, they drifted. Here the trainer builds
each record through `Record.make` (which refuses a missing or unknown key), the readers check what
they read with `Record.check`, `tests/conftest.py` builds its fake runs with `make`, and
docs/ARCHITECTURE.md's table of record keys is `markdown()` (a test fails when it is stale).

`config.json` is not declared here: it is `TrainConfig.to_dict()`, declared by `config.py` (and
docs/SETTINGS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RunDirError

NUMBER = (int, float)
TEXT = (str,)
WHOLE = (int,)
LIST = (list,)
MAYBE_NUMBER = (int, float, type(None))
MAYBE_LIST = (list, type(None))


@dataclass(frozen=True)
class Key:
    name: str
    types: tuple[type, ...]
    meaning: str
    always: bool = True  # False: written only by some runs (the meaning says which)


@dataclass(frozen=True)
class Record:
    """One kind of record: a file of the run folder, or one kind of its metrics lines."""

    file: str
    what: str
    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def make(self, **values) -> dict:
        """The record, its keys in declared order; a `ValueError` for a missing, unknown or ill-typed key
        (a programming error: the writer and the declaration disagree)."""
        missing = [k.name for k in self.keys if k.always and k.name not in values]
        unknown = sorted(set(values) - set(self.names))
        if missing or unknown:
            raise ValueError(f"{self.file}: missing {missing}, unknown {unknown}")
        problem = self._problem(values)
        if problem:
            raise ValueError(f"{self.file}: {problem}")
        return {k.name: values[k.name] for k in self.keys if k.name in values}

    def check(self, record, where: str, needs: tuple[str, ...] = ()) -> dict:
        """`record` as a reader may use it: a JSON object holding `needs`, whose declared keys hold the
        declared types; a `RunDirError` naming `where` and the key otherwise. A reader needs only what
        it reads: runs written by older versions lack keys added since, and keys not declared are kept
        (a newer version may add some)."""
        if not isinstance(record, dict):
            raise RunDirError(f"{where} is damaged: it holds a {type(record).__name__}, not a record")
        missing = [name for name in needs if name not in record]
        if missing:
            raise RunDirError(f"{where} is damaged: it lacks {', '.join(missing)}")
        problem = self._problem(record)
        if problem:
            raise RunDirError(f"{where} is damaged: {problem}")
        return record

    def _problem(self, values: dict) -> str | None:
        for key in self.keys:
            if key.name in values:
                value = values[key.name]
                if isinstance(value, bool) and bool not in key.types or not isinstance(value, key.types):
                    return f"{key.name} is {value!r}, not {' or '.join(t.__name__ for t in key.types)}"
        return None


MARKER = Record("e2vpt-run.json", "written when the folder is created: what tells a run folder from any other", (
    Key("format", WHOLE, "the folder layout's version (1)"),
    Key("created", TEXT, "when the folder was made (ISO time, UTC)"),
))

STATUS = Record("status.json", "where the run stands, rewritten atomically as it goes", (
    Key("state", TEXT, "queued, running, done, failed, cancelled or interrupted"),
    Key("progress", NUMBER, "0 to 1: epochs and scoring passes done, within the current one too"),
    Key("message", TEXT, "what it is doing, or why it stopped (one line)"),
    Key("pid", WHOLE, "the process that wrote it (a dead one makes a running run interrupted)"),
    Key("updated", TEXT, "when it was written (ISO time, UTC)"),
    Key("progress_in_epoch", NUMBER, "while an epoch trains: the share of it done", always=False),
    Key("remaining_s", NUMBER, "while an epoch trains: seconds left, from the time measured so far", always=False),
))

EPOCH = Record("metrics.jsonl (epoch)", "one line per epoch, appended", (
    Key("kind", TEXT, "`epoch`"),
    Key("phase", TEXT, "`train` (round 0) or `retrain` (a pruning round)"),
    Key("round", WHOLE, "0 for the first training, r for pruning round r"),
    Key("epoch", WHOLE, "1, 2, ... within the round"),
    Key("train_loss", NUMBER, "mean cross-entropy over the epoch's training images"),
    Key("train_acc", NUMBER, "accuracy on them, as trained (augmented, dropout on)"),
    Key("val_loss", NUMBER, "on the validation split"),
    Key("val_acc", NUMBER, "on the validation split"),
    Key("lr", NUMBER, "the learning rate at the epoch's end"),
    Key("epoch_s", NUMBER, "seconds the epoch took, validation included"),
    Key("val_s", NUMBER, "seconds of its validation pass"),
    Key("wall_s", NUMBER, "seconds since the run started"),
    Key("tuned_params", WHOLE, "parameters trained (pruned ones excluded)"),
))

PRUNE = Record("metrics.jsonl (prune)", "one line per pruning decision, appended", (
    Key("kind", TEXT, "`prune`"),
    Key("round", WHOLE, "the pruning round it starts"),
    Key("kept_tokens", WHOLE, "prompt tokens left"),
    Key("kept_segments", WHOLE, "segments left in them"),
    Key("tuned_params", WHOLE, "parameters trained after it"),
    Key("score_s", NUMBER, "seconds the scoring took"),
    Key("scored_images", WHOLE, "images the importance was averaged over"),
    Key("wall_s", NUMBER, "seconds since the run started"),
))

ROUND = Record("pruning.json (rounds[])", "one entry per finished round, 0 first", (
    Key("round", WHOLE, "0: the trained, unpruned model; r: after pruning round r"),
    Key("token_mask", MAYBE_LIST, "layers x p, 1 kept / 0 pruned (null without visual prompts)"),
    Key("segment_mask", MAYBE_LIST, "layers x p x R"),
    Key("token_importance", MAYBE_LIST, "the scores that decided this round's tokens (computed on round r-1's "
                                         "model; null for round 0 and for already pruned entries)"),
    Key("segment_importance", MAYBE_LIST, "the same for segments"),
    Key("val_acc", NUMBER, "of the round's best-validation state (its last when validation is trained on)"),
    Key("test_acc", NUMBER, "of that state"),
    Key("tuned_params", WHOLE, "parameters it trains"),
    Key("tuned_params_no_head", WHOLE, "the same without the head"),
    Key("tuned_pct", NUMBER, "tuned_params as a percentage of the backbone's"),
    Key("kept_tokens", WHOLE, "prompt tokens left"),
    Key("kept_segments", WHOLE, "segments left in them"),
    Key("train_s", NUMBER, "seconds of training in the round"),
    Key("score_s", NUMBER, "seconds of scoring that started it"),
    Key("wall_s", NUMBER, "seconds since the run started, at its end"),
    Key("best_epoch", WHOLE, "the epoch whose state the round kept"),
))

PRUNING = Record("pruning.json", "the prompt layout and every round so far, rewritten after each round", (
    Key("method", TEXT, "the method"),
    Key("mask_scope", TEXT, "`layer` or `shared`: where pruning ranks tokens"),
    Key("segment_layout", TEXT, "`interleaved` or `contiguous`"),
    Key("importance", TEXT, "`abs` or `signed`: the score's formula"),
    Key("rewind", TEXT, "`init` or `reinit`: what survivors restart from"),
    Key("num_layers", WHOLE, "the backbone's layers"),
    Key("prompt_layers", WHOLE, "layers holding prompt sets (1 for shallow prompts)"),
    Key("prompt_len", WHOLE, "prompt tokens per layer (p)"),
    Key("segments", WHOLE, "segments per token (R)"),
    Key("kv_len", WHOLE, "key-value prompts per layer (l)"),
    Key("backbone_params", WHOLE, "the backbone's parameters"),
    Key("selected_round", WHOLE, "the round the run reports (chosen on validation)"),
    Key("rounds", LIST, "the round records below"),
))

SUMMARY = Record("summary.json", "written last: a run with a whole summary is done", (
    Key("method", TEXT, "the method"),
    Key("backbone", TEXT, "the backbone"),
    Key("dataset", TEXT, "the dataset"),
    Key("test_acc", NUMBER, "of the reported round"),
    Key("val_acc", NUMBER, "of the reported round"),
    Key("tuned_params", WHOLE, "parameters the reported model trains"),
    Key("tuned_params_no_head", WHOLE, "the same without the head"),
    Key("backbone_params", WHOLE, "the backbone's parameters"),
    Key("tuned_pct", NUMBER, "tuned_params as a percentage of the backbone's"),
    Key("tuned_pct_no_head", NUMBER, "the same without the head"),
    Key("selected_round", WHOLE, "the round reported"),
    Key("rounds", WHOLE, "pruning rounds done"),
    Key("wall_s", NUMBER, "seconds from start to summary"),
    Key("train_s", NUMBER, "seconds of training"),
    Key("score_s", NUMBER, "seconds of scoring"),
    Key("device", TEXT, "where it trained"),
    Key("precision", TEXT, "`bf16` or `fp32`"),
    Key("num_classes", WHOLE, "classes of the dataset"),
    Key("class_names", LIST, "their names, in label order (runs written before this key read them from the data)"),
    Key("data_source", TEXT, "where the images came from (a sentence)"),
    Key("torch_threads", WHOLE, "CPU threads torch used"),
    Key("decoded_cache", TEXT, "image files: the decoded cache they were read from", always=False),
    Key("decoded_cache_build_s", NUMBER, "image files: seconds this run spent building it (0: an earlier "
                                         "run did)", always=False),
    Key("produced_by", (dict,), "the e2vpt version, commit, packages, Python, platform and CPU"),
    Key("phase0_from", TEXT, "a pruning-search run: the run whose phase 0 it took", always=False),
    Key("phase0_train_s", NUMBER, "and that phase's training seconds (paid by that run)", always=False),
    Key("embeddings_s", MAYBE_NUMBER, "seconds spent embedding the test images at the end (null: it failed)",
        always=False),
    Key("audit_s", MAYBE_NUMBER, "seconds spent auditing the pruning decisions (`audit_pruning`)", always=False),
))

RECORDS = (MARKER, STATUS, EPOCH, PRUNE, PRUNING, ROUND, SUMMARY)


def markdown() -> str:
    """The keys of every record, as docs/ARCHITECTURE.md shows them (generated: do not edit there)."""
    lines = []
    for record in RECORDS:
        lines += [f"**`{record.file}`**: {record.what}.", "", "| key | type | meaning |", "|---|---|---|"]
        for key in record.keys:
            types = " or ".join("null" if t is type(None) else {"int": "integer", "str": "text", "float": "number",
                                                                  "list": "list", "dict": "object"}[t.__name__]
                                for t in key.types if not (t is int and float in key.types))
            lines.append(f"| `{key.name}` | {types} | {key.meaning}{'' if key.always else ' (optional)'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
