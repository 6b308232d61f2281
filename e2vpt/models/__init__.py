"""The prompted models: a frozen timm backbone (`backbones`) adapted by visual prompts, key-value prompts
and a head (`base.PromptTuned`; `vit.PromptedViT`, `swin.PromptedSwin`), each method's model
(`prompted.build_model`, from the method's row in `e2vpt.methods`), and the pruning maths on its masks
(`pruning`). `timm_check` verifies at startup that the installed timm still computes what `vit.py` and
`swin.py` re-state.

No training loop, no files and no data here: a model is a function of its config and a backbone.
"""
