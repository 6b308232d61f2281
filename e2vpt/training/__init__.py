"""Training one run: the loop (`trainer`); beside it, building a run's model and data from its config
(`build`), its phases, seeds, optimiser and schedule (`schedule`), the records it writes
(`run_records`), its per-epoch checkpoints (`checkpoints`) and which one continues it (`resume`), the
pruning search's shared phase 0 (`phase0`), several processes of one training under torchrun
(`distributed`) and how long a run will take here (`estimates`).

The loop knows nothing of analysis: what a finished run precomputes for the app is handed to it by
`e2vpt.workflow` (see `after_training.AfterTraining`).
"""
