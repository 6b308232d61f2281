"""The demo-backbone pretraining: deterministic, digit-free data; loadable output; the shipped file is real."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from e2vpt.demo_backbone.glyphs import GlyphBank, GlyphBatches, candidate_characters, find_fonts
from e2vpt.demo_backbone.pretrain import lr_at, pretrain
from e2vpt.models.backbones import DEMO_WEIGHTS, build_demo_vit, create_backbone

MODEL_CARD = DEMO_WEIGHTS.parent / "MODEL_CARD.md"
DIGITS = set("0123456789")


@pytest.fixture(scope="module")
def few_fonts() -> list[Path]:
    fonts = [p for p in find_fonts() if p.name.startswith("DejaVuSans")][:4]
    if len(fonts) < 4:
        pytest.skip("DejaVu fonts (Debian fonts-dejavu-core) are not installed")
    return fonts


@pytest.fixture(scope="module")
def small_bank(few_fonts) -> GlyphBank:
    return GlyphBank.build(font_files=few_fonts, chars=list("ABCDEFGHxyzЖЯΩ3З0") + ["\u0661"])


def test_candidates_never_contain_digits():
    chars = candidate_characters()
    assert not DIGITS & set(chars)
    assert not [c for c in chars if unicodedata.category(c).startswith("N")]


def test_bank_refuses_digits_and_digit_lookalikes(small_bank):
    assert not DIGITS & set(small_bank.chars)
    assert "\u0661" not in small_bank.chars  # Arabic-Indic one: a digit in another script
    assert "З" in small_bank.excluded_digit_like and "З" not in small_bank.chars  # Cyrillic Ze looks like 3
    assert {"A", "Ж", "Ω"} <= set(small_bank.chars)
    assert small_bank.images.shape[0] == int(small_bank.counts.sum())


def test_batches_are_deterministic_per_seed_and_step(small_bank):
    a = GlyphBatches(small_bank, batch_size=16, seed=3)
    x1, y1, t1 = a.batch(7)
    x2, y2, t2 = GlyphBatches(small_bank, batch_size=16, seed=3).batch(7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(t1, t2)
    x3, _, _ = a.batch(8)
    x4, _, _ = GlyphBatches(small_bank, batch_size=16, seed=4).batch(7)
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)
    assert x1.shape == (16, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    assert int(y1.max()) < small_bank.num_classes
    assert t1.shape == (16, 64) and t1.min() >= 0 and t1.max() <= 1 and t1.sum() > 0


def test_schedule_depends_on_step_only():
    assert lr_at(0, 1e-3, 10, 100, 0.05) == pytest.approx(1e-4)
    assert lr_at(100, 1e-3, 10, 100, 0.05) == pytest.approx(5e-5)
    assert lr_at(500, 1e-3, 10, 100, 0.05) == pytest.approx(5e-5)


def test_tiny_pretrain_writes_loadable_backbone(tmp_path, few_fonts):
    out = tmp_path / "tiny.safetensors"
    info = pretrain(out=out, steps=2, seed=0, batch_size=8, threads=1, progress=False, fonts=few_fonts)
    assert info["steps_done"] == 2 and info["stopped_by"] == "steps"
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left no temp file
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    expected = {k for k in build_demo_vit().state_dict() if not k.startswith("head.")}
    assert keys == expected
    assert meta["steps_done"] == "2" and meta["seed"] == "0" and "recipe" in meta
    model = create_backbone("demo", weights=out)
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 65, 192)
    # Same seed and steps: the same weights.
    again = pretrain(out=tmp_path / "again.safetensors", steps=2, seed=0, batch_size=8, threads=1,
                     progress=False, fonts=few_fonts)
    assert again["steps_done"] == 2
    b = create_backbone("demo", weights=tmp_path / "again.safetensors")
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), b.state_dict().values()))


def test_shipped_weights_match_model_card_and_are_trained():
    assert DEMO_WEIGHTS.is_file(), "run `python -m e2vpt pretrain` (see e2vpt/assets/MODEL_CARD.md)"
    assert DEMO_WEIGHTS.stat().st_size <= 15 * 2**20
    digest = hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest()
    card = MODEL_CARD.read_text()
    recorded = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", card)
    assert recorded and recorded.group(1) == digest, "MODEL_CARD.md sha256 does not match the weights file"
    with safe_open(str(DEMO_WEIGHTS), "pt") as f:
        meta = f.metadata()
    assert int(meta["steps_done"]) > 0 and meta["format"] == "e2vpt-demo-backbone"
    shipped = create_backbone("demo").state_dict()
    torch.manual_seed(0)
    random = build_demo_vit().state_dict()
    assert set(shipped) == set(random)
    assert not torch.allclose(shipped["blocks.0.attn.qkv.weight"], random["blocks.0.attn.qkv.weight"])
    assert not torch.allclose(shipped["patch_embed.proj.weight"], random["patch_embed.proj.weight"])
