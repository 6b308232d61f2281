"""Settings are declared once (`e2vpt/config.py`): the CLI flags, the validation and the docs table
all come from that declaration, and a bad value anywhere is one line naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from e2vpt.cli import build_parser, config_from_args
from e2vpt.config import PRESETS, TrainConfig, flag, load_config_file, preset, settings, settings_markdown
from e2vpt.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_flag_in_train_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in settings():
        assert flag(f) in help_text, f.name
    assert {f.name for f in settings()} | {"extra"} == set(TrainConfig().to_dict())


def test_the_settings_table_in_docs_is_the_generated_one():
    assert (ROOT / "docs" / "SETTINGS.md").read_text() == settings_markdown() + "\n", \
        "docs/SETTINGS.md is stale: regenerate it with `python -m e2vpt settings > docs/SETTINGS.md`"


def test_flags_override_a_config_file_and_only_given_flags_count(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nprompt-len: 3\nlr: 0.05\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--epochs", "2", "--precision", "bf16"])
    config = config_from_args(args)
    assert (config.epochs, config.prompt_len, config.lr, config.precision) == (2, 3, 0.05, "bf16")
    assert config.batch_size == TrainConfig().batch_size  # not given anywhere: the default


@pytest.mark.parametrize("values, field", [
    ({"epochs": "2"}, "epochs"), ({"lr": "abc"}, "lr"), ({"batch_size": 2.5}, "batch_size"),
    ({"epochs": float("inf")}, "epochs"), ({"warmup_epochs": float("inf")}, "warmup_epochs"),
    ({"seed": 1e23}, "seed"), ({"prompt_len": 10**11}, "prompt_len"), ({"device": "meta"}, "device"),
    ({"prune_rounds": 10**12}, "prune_rounds"), ({"lr": float("nan")}, "lr"), ({"pretrained": "yes"}, "pretrained"),
    ({"method": "vpt"}, "method"), ({"prune_ratio": 1.0}, "prune_ratio"), ({"epochs": 0}, "epochs"),
    ({"mask_scope": 1}, "mask_scope"), ({"backbone": ""}, "backbone"), ({"img_size": 4}, "img_size"),
    ({"method": "vpt-deep", "prompt_len": 0}, "prompt_len"),
])
def test_a_bad_value_is_one_line_naming_the_field(values, field):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(values)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{field} (--{field.replace('_', '-')})"), message


def test_integral_numbers_are_accepted_for_whole_number_settings():
    config = TrainConfig.from_dict({"epochs": 3.0, "lr": 1, "seed": 2**32 - 1})
    assert config.epochs == 3 and isinstance(config.epochs, int) and config.lr == 1.0


def test_unknown_keys_and_non_mappings_are_refused_with_the_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting.*epoch.*valid settings: .*epochs"):
        TrainConfig.from_dict({"epoch": 3})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(["x"]))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config_file(path)


def test_presets_are_valid_settings():
    for name in PRESETS:
        assert isinstance(preset(name), TrainConfig)
    assert preset("paper", epochs=1).epochs == 1
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_a_bad_flag_value_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "e2vpt", "train", "--warmup-epochs", "inf",
                             "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: warmup_epochs (--warmup-epochs) must be a finite number, got inf"
    assert not (tmp_path / "r").exists()


def test_a_run_saved_with_the_older_amp_setting_still_reads_as_its_precision():
    assert TrainConfig.from_dict({"amp": True}).precision == "auto"  # bf16 on CUDA, as amp meant
    assert TrainConfig.from_dict({"amp": False}).precision == "fp32"
    assert "amp" not in TrainConfig.from_dict({"amp": False}).to_dict()
