"""Training one run: the loop (`trainer`), building a run's model and data from its config (`build`),
its per-epoch checkpoints (`checkpoints`), several processes of one training under torchrun
(`distributed`) and how long a run will take here (`estimates`).

The loop knows nothing of analysis: what a finished run precomputes for the app is handed to it by
`e2vpt.workflow` (see `trainer.AfterTraining`).
"""
