"""The training loop, read top to bottom: phases, epochs, pruning rounds, records.

A run is a list of phases: phase 0 trains the freshly initialised model; for e2vpt each later
phase r first scores the prompts, prunes, rewinds the survivors and then retrains. Every epoch ends
with a checkpoint (model, optimiser, schedule, best-so-far) written atomically, and every random
draw is seeded from (seed, phase, epoch), so `--resume` after a crash continues from the last
completed epoch and reaches the same result as an uninterrupted run.

This file is the loop and a run's life (start, resume, cancel, fail, finish). Beside it: the model
and data (`build.py`, shared with evaluation and analysis), seeds and optimiser (`schedule.py`), the
records (`run_records.py`), checkpoints (`checkpoints.py`, `resume.py`), the pruning search's shared
phase 0 (`phase0.py`) and what a finished run computes before it is done (`after_training.py`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.pipeline import DeviceBatches, return_free_memory
from ..errors import Cancelled, NumericsError, UserError
from ..fileio import append_jsonl, atomic_save_safetensors, atomic_write_bytes, atomic_write_json, is_disk_full
from ..models.pruning import (Importance, min_segments_for, prune_segments, prune_tokens, refuse_useless_rounds, rewind,
                              score_importance)
from ..run_schema import EPOCH, PRUNE, SUMMARY
from ..runs import RunDir, read_tensors
from .after_training import AfterTraining
from .build import autocast_for, build_model_and_splits, evaluate, resolve_device
from .checkpoints import Checkpoint, remove_checkpoints, save_checkpoint
from .distributed import DistContext, global_batches, local_batches
from .phase0 import read_phase0, shared_importance
from .resume import open_to_resume, saved_initial_state, usable_checkpoint
from .run_records import cancel_note, pruning_record, round_record, selected_round
from .run_records import summary as run_summary
from .run_records import truncate_metrics
from .schedule import Phase, make_optimizer, phases_of, seed_for


class Trainer:
    """Trains one configuration into one run directory.

    Args:
        config: the run's hyper-parameters.
        run_dir: where everything is written (None: a throw-away run, nothing written).
        quiet: no tqdm bars (the app's subprocess still logs its status file).
        on_epoch: called with each epoch's metric record after it is written (a sweep reports it to
            Ray Tune, whose scheduler may stop the trial there).
        phase0_from: a finished run whose phase 0 this run takes instead of training its own (the pruning
            search: one phase 0, scored once, then one run per pruning level). It must differ only in
            pruning settings; its scores (`search_importance.safetensors`) are used when it has them.
            Recorded in config.json, so `--resume` finds it again.
        score_after: score the prompts once more after the last phase and keep the scores in the run
            folder, for the runs that will take this run's phase 0.
        after_training: what to compute while the trained model is still in memory, once its weights are
            saved and before the run is marked done (`AfterTraining`; `e2vpt.workflow` passes the views
            the app opens at once). The loop knows nothing of what they compute.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None, quiet: bool = False,
                 on_epoch: Callable[[dict], None] | None = None, phase0_from: str | Path | None = None,
                 score_after: bool = False, after_training: Sequence[AfterTraining] = ()) -> None:
        self.config = config
        self.after_training = tuple(after_training)
        self.on_epoch = on_epoch
        self.phase0_from = phase0_from or config.extra.get("phase0_from")
        self.score_after = score_after
        self.search_score_s = 0.0
        self.run = RunDir(run_dir) if run_dir is not None else None
        self.quiet = quiet
        self.stop_requested = False
        self.dist = DistContext.from_env()
        self.device = resolve_device(config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.autocast = autocast_for(self.device, config.precision)
        self.rounds: list[dict] = []
        self.round_states: dict[int, dict] = {}
        self.units_done, self.total_units = 0, 1
        self._epoch_started, self._last_epoch_s = time.monotonic(), None  # for the remaining-time estimate
        self.pending = None
        self.resume_note = ""
        self.wall_offset = 0.0
        self._last_status = 0.0

    # ----------------------------------------------------------------------------------------------
    # setup
    def setup(self) -> None:
        """Backbone, data and model: everything before the first step."""
        cfg = self.config
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        model, self.splits = build_model_and_splits(cfg, download=cfg.download, train_augment=cfg.train_augment)
        self.model = model.to(self.device)
        refuse_useless_rounds(self.model.tuned.token_mask.cpu(), cfg)
        self.initial_state = self.model.tuned_state()
        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.phases = phases_of(cfg)
        self.total_units = sum(p.epochs for p in self.phases) + cfg.rounds  # a scoring pass counts as one epoch
        self.backbone_params = self.model.backbone_param_count()

    def _loader(self, split: str, shuffle: bool = False, seed: int = 0, training: bool = False) -> DeviceBatches:
        """This rank's share of the split, batch by batch (all of it in a single process), ready on the
        device: augmented (when the split is) with crops drawn from `seed`, and normalised.

        For training, `self.global_sizes` keeps each global batch's size for the loss scaling, and a
        global batch smaller than the number of processes (possible only as the last one) is dropped.
        """
        dataset = getattr(self.splits, split)
        batch = self.config.batch_size if training else max(self.config.batch_size, 256)
        batches = global_batches(len(dataset), batch, shuffle, seed)
        if training:
            batches = [b for b in batches if len(b) >= self.dist.world]
            self.global_sizes = [len(b) for b in batches]
        shards = [b for b in local_batches(batches, self.dist) if b]
        return DeviceBatches(dataset, shards, self.device, seed=seed_for(seed, self.dist.rank),
                             workers=self.config.workers)

    # ----------------------------------------------------------------------------------------------
    # records
    @property
    def writer(self) -> RunDir | None:
        """The run directory, on the one process that writes it (rank 0)."""
        return self.run if self.dist.is_main else None

    STATUS_EVERY_S = 0.5  # a status file written at most this often (unless forced)

    def _status(self, state: str, message: str = "", force: bool = False, within: float = 0.0, **extra) -> None:
        """Write the status (at most twice a second unless forced); `within` is the share of the
        current unit (epoch or scoring pass) already done, so the progress moves inside an epoch."""
        if self.writer is None:
            return
        now = time.monotonic()
        if not force and now - self._last_status < self.STATUS_EVERY_S:
            return
        self._last_status = now
        self.run.write_status(state, (self.units_done + within) / max(self.total_units, 1), message, **extra)

    def _remaining_s(self, fraction: float) -> float:
        """Seconds left, estimated from measured time: the last whole epoch's duration (validation
        included) per remaining unit, or before one has finished, this epoch's pace so far."""
        elapsed = time.monotonic() - self._epoch_started
        per_unit = self._last_epoch_s or elapsed / max(fraction, 1e-9)  # a whole epoch, measured or projected
        return per_unit * (1.0 - fraction + max(self.total_units - self.units_done - 1, 0))

    def _log(self, record: dict) -> None:
        if self.writer is not None:
            append_jsonl(self.run.metrics_file, record)

    def _wall(self) -> float:
        return self.wall_offset + (time.monotonic() - self.started)

    def _write_pruning(self) -> None:
        if self.writer is not None:
            atomic_write_json(self.run.pruning_file, pruning_record(self.model, self.config, self.backbone_params,
                                                                    self.rounds), compact=True)

    # ----------------------------------------------------------------------------------------------
    # checkpoints
    def _save_checkpoint(self, phase_index: int, epochs_done: int, optimizer, scheduler, best: dict) -> None:
        if self.writer is None:
            return
        save_checkpoint(self.run, phase=phase_index, epochs_done=epochs_done, model_state=self.model.tuned_state(),
                        best=best, rounds=self.rounds, wall_s=self._wall(), units_done=self.units_done,
                        pending=self.pending, optimizer=optimizer, scheduler=scheduler)

    def _restore_checkpoint(self) -> Checkpoint | None:
        """Put the model and the records back where the newest usable checkpoint left them (`resume`);
        None when none can be used. `self.resume_note` says what was skipped, for the status and the log."""
        checkpoint, self.resume_note = usable_checkpoint(self.run, self.model, self.phases)
        if checkpoint is not None:
            self.model.load_tuned_state({k: v.to(self.device) for k, v in checkpoint.model_state.items()})
            self.rounds = checkpoint.rounds
            self.wall_offset = checkpoint.wall_s
            self.units_done = checkpoint.units_done
        return checkpoint

    # ----------------------------------------------------------------------------------------------
    # the loop
    def _check_stop(self) -> None:
        stop = self.stop_requested or (self.run is not None and self.run.cancel_file.exists())
        if self.dist.enabled:  # every rank must leave at the same step, or the others wait forever
            stop = bool(self.dist.all_reduce(torch.tensor([float(stop)], device=self.device)).item())
        if stop:
            raise Cancelled()

    def _train_epoch(self, phase: Phase, epoch: int, optimizer, scheduler) -> tuple[float, float]:
        cfg, model = self.config, self.model
        torch.manual_seed(seed_for(cfg.seed, phase.index, epoch))  # dropout draws
        self._epoch_started = time.monotonic()
        loader = self._loader("train", shuffle=True, seed=seed_for(cfg.seed, phase.index, epoch, 7), training=True)
        model.train()
        loss_sum, correct, total = 0.0, 0, 0
        bar = tqdm(loader, desc=f"{phase.name} r{phase.index} e{epoch + 1}/{phase.epochs}", leave=False,
                   disable=self.quiet, dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            self._check_stop()
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with self.autocast() if self.autocast else contextlib.nullcontext():
                logits = self.train_model(images)
            local_sum = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing, reduction="sum")
            # DDP averages gradients over ranks: scaling by world / global size makes that the global mean
            loss = local_sum * (self.dist.world / self.global_sizes[step])
            if not torch.isfinite(loss):
                raise NumericsError(f"loss became {loss.item()} at step {step + 1} of epoch {epoch + 1} "
                                    f"({phase.name}, round {phase.index}); lower --lr (now {cfg.resolved_lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.schedule_step == "batch":
                scheduler.step()
            model.zero_pruned()  # weight decay must not revive a pruned entry
            loss_sum += local_sum.item()
            correct += (logits.argmax(1) == labels).sum().item()
            total += labels.numel()
            fraction = (step + 1) / len(loader)
            self._status("running", f"{phase.name} round {phase.index}: epoch {epoch + 1}/{phase.epochs}",
                         within=fraction, progress_in_epoch=round(fraction, 3),
                         remaining_s=round(self._remaining_s(fraction), 1))
            bar.set_postfix(loss=f"{local_sum.item() / labels.numel():.3f}")
        if cfg.schedule_step == "epoch":
            scheduler.step()
        if self.dist.enabled:
            sums = self.dist.all_reduce(torch.tensor([loss_sum, correct, total], dtype=torch.float64, device=self.device))
            loss_sum, correct, total = sums[0].item(), sums[1].item(), sums[2].item()
        return loss_sum / max(total, 1), correct / max(total, 1)

    def _prune(self, phase: Phase):
        """Score, prune tokens then segments, rewind: the start of every pruning round."""
        cfg, model = self.config, self.model
        self._status("running", f"round {phase.index}: scoring prompt importance", force=True)
        start = time.monotonic()
        importance = shared_importance(self.phase0_from, model) if phase.index == 1 else None
        if importance is None:
            importance = self._score()
        t = model.tuned
        token_mask = prune_tokens(t.token_mask, importance.token, cfg.prune_ratio, cfg.mask_scope,
                                  count=cfg.prune_count)
        segment_mask = prune_segments(token_mask, t.segment_mask, importance.segment, cfg.segment_ratio,
                                      min_segments_for(cfg.segments), cfg.mask_scope,
                                      per_token=cfg.segment_rank == "per-token", count=cfg.prune_count)
        model.set_masks(token_mask, segment_mask)
        generator = torch.Generator().manual_seed(seed_for(cfg.seed, phase.index, 99))
        rewind(model, self.initial_state, cfg.rewind, generator)
        score_s = time.monotonic() - start
        self.units_done += 1
        self._log(PRUNE.make(kind="prune", round=phase.index, kept_tokens=int(token_mask.sum()),
                             kept_segments=int((segment_mask * token_mask[..., None]).sum()),
                             tuned_params=model.tuned_param_count(), score_s=round(score_s, 3),
                             scored_images=importance.images, wall_s=round(self._wall(), 3)))
        return importance, score_s

    def _score(self) -> Importance:
        cfg = self.config
        return score_importance(self.model, self._loader("train"), self.device, cfg.importance, self.autocast,
                                all_reduce=self.dist.all_reduce if self.dist.enabled else None,
                                token_from=cfg.token_importance)

    def _save_search_importance(self) -> None:
        """`score_after`: score the final state once, for every run that takes this run's phase 0."""
        if self.writer is None or self.model.tuned.visual is None:
            return
        self._status("running", "scoring prompt importance for the pruning search", force=True)
        start = time.monotonic()
        importance = self._score()
        self.search_score_s = time.monotonic() - start
        atomic_save_safetensors(self.run.search_importance_file, {
            "token": importance.token, "segment": importance.segment,
            "images": torch.tensor(importance.images), "score_s": torch.tensor(self.search_score_s)})

    def _adopt_phase0(self) -> None:
        """Stand where `phase0_from` stood after its phase 0 (`phase0.read_phase0`): its initial values,
        round-0 state, record and epoch lines. What follows (pruning rounds) is this run's own, and so
        is its wall time."""
        record, state, initial, lines = read_phase0(self.phase0_from, self.config, self.model.tuned_state())
        self.initial_state = {k: v.to(self.device) for k, v in initial.items()}
        self.model.load_tuned_state({k: v.to(self.device) for k, v in state.items()})
        self.rounds = [record]
        self.round_states[0] = state
        self.units_done = self.phases[0].epochs
        if self.writer is not None:
            atomic_save_safetensors(self.run.init_file, self.initial_state)
            atomic_save_safetensors(self.run.round_file(0), state)
            atomic_write_bytes(self.run.metrics_file, "".join(json.dumps(r) + "\n" for r in lines).encode())
            self._write_pruning()
            self._save_checkpoint(1, 0, None, None, {})

    def _run_phase(self, phase: Phase, start_epoch: int, resume_state: Checkpoint | None = None) -> None:
        """Train one phase (pruning first when it is a pruning round) and record its result.

        `resume_state` is a checkpoint taken inside this phase: its optimiser, schedule, best-so-far
        and pruning scores carry on from where they were.
        """
        pruning_now = resume_state is None and phase.index > 0
        if pruning_now:
            self.pending = self._prune(phase)  # scored at the mask values the first phase trained
        self.model.train_mask_values(phase.index == 0)  # trained masks learn in the first phase only
        optimizer, scheduler = make_optimizer(self.model, self.config, len(self.splits.train), phase.epochs)
        best: dict = {}
        if resume_state is not None:
            resume_state.restore_optimizer(optimizer, scheduler)
            best = resume_state.best
            self.pending = resume_state.pending
        elif pruning_now:
            self._save_checkpoint(phase.index, 0, optimizer, scheduler, best)
        else:
            self.pending = None
        importance, score_s = self.pending if self.pending else (None, 0.0)
        val_loader = self._loader("val")
        phase_start = time.monotonic()
        for epoch in range(start_epoch, phase.epochs):
            epoch_start = time.monotonic()
            train_loss, train_acc = self._train_epoch(phase, epoch, optimizer, scheduler)
            val_start = time.monotonic()
            val_loss, val_acc = evaluate(self.model, val_loader, self.device, self.autocast, self.dist)
            val_s = time.monotonic() - val_start  # what one validation pass costs (prices the pruning audit)
            self.units_done += 1
            if not best or val_acc > best["val_acc"] or not self.config.holds_out_val:
                best = {"val_acc": val_acc, "epoch": epoch + 1, "state": self.model.tuned_state()}
            # the line first, then the checkpoint: a crash between them resumes from the previous
            # checkpoint, which drops the line and trains the epoch again (the reverse would lose the line)
            record = EPOCH.make(kind="epoch", phase=phase.name, round=phase.index, epoch=epoch + 1,
                                train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                                lr=scheduler.get_last_lr()[0], epoch_s=round(time.monotonic() - epoch_start, 3),
                                val_s=round(val_s, 3), wall_s=round(self._wall(), 3),
                                tuned_params=self.model.tuned_param_count())
            self._log(record)
            self._last_epoch_s = record["epoch_s"]
            self._save_checkpoint(phase.index, epoch + 1, optimizer, scheduler, best)
            self._status("running", f"{phase.name} round {phase.index}: epoch {epoch + 1}/{phase.epochs} "
                         f"val acc {val_acc:.3f}", force=True)
            if self.on_epoch is not None:
                self.on_epoch(record)
        # the phase's result is its best-validation state (its last when val is trained on)
        self.model.load_tuned_state({k: v.to(self.device) for k, v in best["state"].items()})
        _, test_acc = evaluate(self.model, self._loader("test"), self.device, self.autocast, self.dist)
        record = round_record(self.model, phase.index, importance, best["val_acc"], test_acc,
                              time.monotonic() - phase_start, score_s, self._wall(), self.backbone_params,
                              best["epoch"])
        self.rounds.append(record)
        self.pending = None
        self.round_states[phase.index] = self.model.tuned_state()
        if self.writer is not None:
            atomic_save_safetensors(self.run.round_file(phase.index), self.round_states[phase.index])
            self._write_pruning()
        self._save_checkpoint(phase.index + 1, 0, None, None, {})

    # ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Run every phase and return the summary (also written to summary.json)."""
        self.started = time.monotonic()
        created = False
        if self.writer is not None:
            if resume:
                open_to_resume(self.run)
            else:
                created = self.run.prepare_new()
                self.run.lock()
                self.config.extra.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
                if self.phase0_from:
                    self.config.extra["phase0_from"] = str(Path(self.phase0_from).resolve())
                atomic_write_json(self.run.config_file, self.config.to_dict())
            self._status("running", "loading backbone and data", force=True)
        self.dist.init(self.device)
        self.dist.barrier()  # the run directory exists before any other rank reads it
        try:
            try:
                self.setup()
            except UserError:
                if created:  # nothing was trained: leave nothing half-written behind
                    shutil.rmtree(self.run.path, ignore_errors=True)
                    self.run = None
                raise
            start_phase, start_epoch, resume_state, checkpoint = 0, 0, None, None
            if self.run is not None:
                saved_init = saved_initial_state(self.run, self.initial_state, self.device) if resume else None
                if saved_init is not None:
                    self.initial_state = saved_init
                elif self.writer is not None:
                    atomic_save_safetensors(self.run.init_file, self.initial_state)
                checkpoint = self._restore_checkpoint() if resume else None
                if checkpoint is not None:
                    start_phase, start_epoch = checkpoint.phase, checkpoint.epochs_done
                    resume_state = checkpoint if checkpoint.mid_phase else None
                    self._truncate_metrics(start_phase, start_epoch, pruned=resume_state is not None)
                elif resume and not self.phase0_from:
                    self._truncate_metrics(0, 0, pruned=False)
                    self.model.load_tuned_state(self.initial_state)
                if resume and self.resume_note:
                    self._status("running", f"resuming: {self.resume_note}", force=True)
                    tqdm.write(f"e2vpt: resuming {self.run.path}: {self.resume_note}", file=sys.stderr)
            if checkpoint is None and self.phase0_from:
                self._adopt_phase0()
                start_phase, start_epoch = 1, 0
            for phase in self.phases[start_phase:]:
                state = resume_state if phase.index == start_phase else None
                self._run_phase(phase, start_epoch if phase.index == start_phase else 0, state)
                start_epoch = 0
            if self.score_after:
                self._save_search_importance()
            return self._finish()
        except (Cancelled, KeyboardInterrupt) as exc:
            exc.args = (cancel_note(self.run),)  # what the CLI prints, as the status says it
            self._status("cancelled", exc.args[0], force=True)
            raise
        except UserError as exc:  # NumericsError too
            self._status("failed", str(exc), force=True)
            raise
        except Exception as exc:
            if is_disk_full(exc):  # an OSError, or safetensors' own error that only says it in words
                message = (f"the disk is full ({exc}); the last completed epoch is kept: free some space, "
                           f"then continue with `python -m e2vpt train --resume {self.run.path if self.run else 'RUN_DIR'}`")
                with contextlib.suppress(Exception):
                    self._status("failed", message, force=True)
                raise UserError(message) from None
            self._status("failed", f"{type(exc).__name__}: {exc}", force=True)
            raise

    def _truncate_metrics(self, phase_index: int, epochs_done: int, pruned: bool) -> None:
        if self.writer is not None:
            truncate_metrics(self.run, phase_index, epochs_done, pruned)

    def _finish(self) -> dict:
        cfg = self.config
        selected = selected_round(self.rounds, cfg)
        state = self.round_states.get(selected)
        if state is None and self.run is not None:  # a round finished before a resume
            state = read_tensors(self.run.round_file(selected))
        if state is not None:
            self.model.load_tuned_state({k: v.to(self.device) for k, v in state.items()})
        summary = run_summary(cfg, self.rounds, selected, backbone_params=self.backbone_params, wall_s=self._wall(),
                              search_score_s=self.search_score_s, device=self.device,
                              precision="bf16" if self.autocast else "fp32", splits=self.splits,
                              phase0_from=self.phase0_from)
        if self.writer is not None:
            atomic_save_safetensors(self.run.weights_file, self.model.tuned_state(),
                                    {"method": cfg.method, "backbone": cfg.backbone, "selected_round": selected})
            for step in self.after_training:
                if step.wanted(self):
                    self._status("running", step.message, force=True)
                    summary[f"{step.key}_s"] = step.timed(self)
            summary = SUMMARY.make(**summary)  # the end-of-run steps' keys checked too
            atomic_write_json(self.run.summary_file, summary)
            self.units_done = self.total_units
            self._status("done", f"test acc {summary['test_acc']:.3f} with {summary['tuned_pct']:.3f}% tuned",
                         force=True)
            remove_checkpoints(self.run)
        return summary


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          on_epoch: Callable[[dict], None] | None = None, phase0_from: str | Path | None = None,
          score_after: bool = False, after_training: Sequence[AfterTraining] = ()) -> dict:
    """Train `config` into `run_dir`; returns the summary. The loop alone: `e2vpt.train` adds the
    end-of-run views. `phase0_from` and `score_after`: the pruning search; `after_training`: see `Trainer`."""
    trainer = Trainer(config, run_dir, quiet=quiet, on_epoch=on_epoch, phase0_from=phase0_from,
                      score_after=score_after, after_training=after_training)

    def request_stop(signum, frame):
        trainer.stop_requested = True
        if not trainer.dist.enabled:  # every write is crash-safe, so the run may stop at any point
            raise Cancelled()         # (ranks of one training must stop together: they check the flag)

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, request_stop)
    except ValueError:  # not in the main thread (e.g. a notebook's worker): Cancel via cancel.request only
        pass
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.dist.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        del trainer
        return_free_memory()  # a sweep's worker trains many runs: each must not keep its peak
