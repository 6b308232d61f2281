"""The model card of an adapter (its README.md): what it does, how well, at what cost, and how to use it.

Generated from adapter_config.json alone, so the card can never say something the config does not.
"""

from __future__ import annotations


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _kb(count) -> str:
    return "-" if count is None else f"{count / 1000:.1f} kB"


def model_card(config: dict) -> str:
    """README.md of an adapter folder, from its config."""
    base, data, run, prompts = config["base_model"], config["dataset"], config["run"], config["prompts"]
    settings, sizes, rule = config["settings"], config.get("file_bytes", {}), config["preprocessing"]
    classes = ", ".join(data["class_names"][:20]) + (f", ... ({data['num_classes']} in all)"
                                                     if data["num_classes"] > 20 else "")
    kept = prompts["kept_values"]
    pruned = (f"{kept:,} of {prompts['values_before_pruning']:,} visual-prompt values survive pruning "
              f"(tokens kept per layer: {prompts['kept_tokens_per_set']})" if prompts["values_before_pruning"]
              else "no visual prompts")
    weights = f", weights file {base['weights_file']}" if base.get("weights_file") else ""
    backbone_arg = f"'{base['name']}'" + (f", weights='{base['weights_file']}'" if base.get("weights_file") else "")
    lines = [
        f"# {config['method']} on {data['name']}: an E2VPT-studio adapter for {base['name']}",
        "",
        f"An adapter trained with `{config['method']}` (recipe `{config['recipe']}`) on the frozen backbone "
        f"`{base['name']}` for {data['num_classes']}-class classification of {data['name']}: {classes}.",
        "",
        "## Accuracy",
        "",
        "| split | accuracy |",
        "|---|---|",
        f"| validation | {_pct(config['accuracy']['val'])} |",
        f"| test | {_pct(config['accuracy']['test'])} |",
        "",
        f"Round {run['round']} of run `{run['id']}` (the run reports round {run['selected_round']}, chosen on "
        f"validation; {run['rounds']} round(s) in all), trained on {run.get('device') or '-'} at commit "
        f"{run.get('commit') or '-'}, e2vpt {config['e2vpt_version']}. Data: {data['source']}",
        "",
        "## What it holds",
        "",
        f"- {config['tuned_params']:,} tuned parameters against the backbone's {base['params']:,} "
        f"({100 * config['tuned_params'] / max(base['params'], 1):.3f} %); {pruned}; "
        f"{prompts['kv_len']} key-value prompt(s) per layer.",
        f"- `adapter_model.safetensors`: {_kb(sizes.get('adapter'))} (with nothing pruned: "
        f"{_kb(sizes.get('unpruned'))}). Pruned tokens and segments are absent from it, not stored as zeros; "
        "the masks are in `adapter_config.json`.",
        f"- The backbone it needs: `{base['name']}` ({'pretrained' if base['pretrained'] else 'random init'}"
        f"{weights}), weights sha256 `{base['sha256']}`; any other backbone is refused.",
        f"- Preprocessing: resize the whole image to {rule['size']}x{rule['size']} ({rule['resize']}), "
        f"{rule['channels']}, then (x / 255 - mean) / std with mean {rule['mean']} and std {rule['std']}.",
        "",
        "## Use it",
        "",
        "```python",
        "import e2vpt",
        f"model = e2vpt.load_adapter('.', backbone={backbone_arg})  # this folder",
        "logits = model(images)  # (B, 3, H, W), preprocessed as above",
        "names = model.adapter_config['dataset']['class_names']",
        "```",
        "",
        "```",
        "python -m e2vpt predict . IMAGE.png --top-k 5",
        "```",
        "",
        f"Settings: prompt length {settings.get('prompt_len')}, key-value length {settings.get('kv_len')}, "
        f"{settings.get('segments')} segments per token, seed {settings.get('seed')}.",
    ]
    if sizes.get("onnx"):
        lines += [
            "",
            "## ONNX",
            "",
            f"`model.onnx` ({sizes['onnx'] / 1e6:.1f} MB) is the whole model, backbone included, with the "
            "pruned prompts fixed in place and a dynamic batch axis: input `images` (batch, 3, "
            f"{rule['size']}, {rule['size']}), preprocessed as above; output `logits` (batch, {data['num_classes']}).",
            "",
            "```python",
            "import onnxruntime",
            "session = onnxruntime.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])",
            "logits = session.run(None, {'images': images})[0]  # images: float32 numpy array",
            "```",
        ]
    return "\n".join(lines) + "\n"
