"""The three readings of E2VPT (`--recipe`): `studio` (this project's defaults), `paper` (the paper's
text) and `official` (the official code). docs/RECIPES.md gives each choice's source and why the
studio's differs.

A recipe sets these `TrainConfig` fields at once; `TrainConfig.from_dict` (files, flags, the form,
presets) lets a value given explicitly win, and config.json records the resolved values.
"""

RECIPES = {
    "studio": {},  # the defaults `TrainConfig` declares
    "paper": {"mask_scope": "shared", "kv_shared": False, "importance": "abs", "token_importance": "mask",
              "rewind": "init", "pruned_tokens": "remove", "train_masks": False, "segments": 16,
              "segment_layout": "interleaved", "segment_rank": "global", "prompt_dropout": 0.0,
              "avg_pool": "patches"},
    "official": {"mask_scope": "shared", "kv_shared": True, "importance": "signed", "token_importance": "mask",
                 "rewind": "reinit", "pruned_tokens": "zero", "train_masks": True, "segments": 16,
                 "segment_layout": "interleaved", "prompt_dropout": 0.1, "optimizer": "sgd", "weight_decay": 1e-4,
                 "schedule_step": "epoch", "segment_rank": "per-token", "avg_pool": "tokens", "prune_count": "floor"},
}

# What a saved config.json that lacks a setting meant: the setting did not exist yet, and the run behaved
# as this value (an `official` run saved before `prune_count` rounded its counts).
SAVED_BEFORE_SETTING = {"prune_count": "round"}
