"""Offline pretraining data for the demo backbone: font glyphs, rendered and heavily augmented.

Why glyphs: prompt tuning needs a backbone whose features already separate small shapes, and the
only image source every Debian machine has without a download is its fonts. Letters of several
scripts in ~80 font faces give hundreds of stroke-shape classes; strong augmentation (affine,
stroke width, blur, an 8x8 low-resolution path, noise, colour and inversion) makes the features
robust to the low-resolution, centred, thick-stroked inputs of the built-in tasks.

Why these exclusions: the pretraining data must be *disjoint* from every built-in evaluation task.
Digits (sklearn digits is the main task) are never rendered: every character of Unicode category
N* is refused, and so is every letter that looks like a digit in the reference font (e.g. Cyrillic
Ze vs 3), measured by mask overlap. Characters that look like an earlier class (Latin A vs Greek
Alpha vs Cyrillic A) are dropped, so no two classes are the same picture. No sprites, no counting
scenes and no Fashion-MNIST are used.

Determinism: `GlyphBank` depends only on the installed font files; `GlyphBatches.batch(step)` draws
from a `torch.Generator` seeded by `(seed, step)`, so any step's batch can be regenerated alone.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# Debian packages providing the fonts: fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf,
# fonts-urw-base35. Symbol/dingbat faces map Latin code points to pictures, so they are left out.
FONT_DIRS = [
    ("/usr/share/fonts/truetype/dejavu", "*.ttf"),
    ("/usr/share/fonts/truetype/liberation", "*.ttf"),
    ("/usr/share/fonts/truetype/freefont", "*.ttf"),
    ("/usr/share/fonts/opentype/urw-base35", "*.otf"),
]
FONT_EXCLUDE = ("StandardSymbols", "D050000L", "DejaVuMathTeXGyre")
REFERENCE_FONT = "DejaVuSans.ttf"  # the face in which homoglyphs and digit look-alikes are judged

BANK_SIZE = 48   # each glyph is stored box-fitted into a BANK_SIZE square ...
GLYPH_BOX = 40   # ... inside a GLYPH_BOX square (the rest is margin for thickening)
OUT_SIZE = 32    # the demo ViT's input size
TARGET_SIZE = 8  # the clean-shape regression target is the ink mask pooled to TARGET_SIZE^2
MIN_FONTS = 4    # a character rendered by fewer faces than this is not a class
HOMOGLYPH_IOU = 0.85  # masks this similar in the reference face count as the same picture
DIGIT_IOU = 0.70      # a letter this similar to a digit in the reference face is refused


def _range(a: int, b: int) -> list[str]:
    return [chr(c) for c in range(a, b + 1)]


def candidate_characters() -> list[str]:
    """Latin, Greek, Cyrillic letters and distinctive symbols, in a fixed order (earlier wins ties)."""
    latin = _range(0x41, 0x5A) + _range(0x61, 0x7A)
    extra_latin = list("ßæÆøØþÞðÐœŒłŁđ")
    greek = [c for c in _range(0x391, 0x3A9) if c != "\u03a2"] + _range(0x3B1, 0x3C9)
    cyrillic = _range(0x410, 0x44F) + list("ЁЄІЇЎђћџ")
    # Tiny marks (. , ' - _ :) become blobs once box-fitted, so only shapeful symbols are kept.
    symbols = list("!#$%&()*+/<=>?@[\\]^{}~§¶©®±×÷¿¡µ€£¥¢∞√∑∫≈≠≤≥∂∆∏Ω←→↑↓↔♠♣♥♦★☆●○■□▲△▼▽◆◇")
    chars = latin + extra_latin + greek + cyrillic + symbols
    return [c for c in chars if not unicodedata.category(c).startswith("N")]


def find_fonts() -> list[Path]:
    """Installed font files used for pretraining, sorted so the bank is the same on every machine."""
    fonts: list[Path] = []
    for folder, pattern in FONT_DIRS:
        fonts += [p for p in sorted(Path(folder).glob(pattern)) if not any(x in p.name for x in FONT_EXCLUDE)]
    return fonts


def _render(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray | None:
    """The glyph box-fitted (aspect kept) into GLYPH_BOX and centred on a BANK_SIZE canvas, uint8."""
    left, top, right, bottom = font.getbbox(ch)
    w, h = right - left, bottom - top
    if w <= 0 or h <= 0:
        return None
    img = Image.new("L", (w + 4, h + 4), 0)
    ImageDraw.Draw(img).text((2 - left, 2 - top), ch, font=font, fill=255)
    bbox = img.getbbox()
    if bbox is None:
        return None
    img = img.crop(bbox)
    scale = GLYPH_BOX / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (BANK_SIZE, BANK_SIZE), 0)
    canvas.paste(img, ((BANK_SIZE - size[0]) // 2, (BANK_SIZE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _missing_marker(font: ImageFont.FreeTypeFont) -> bytes | None:
    """How this face draws a character it lacks (.notdef), to recognise missing glyphs."""
    out = _render(font, "\ue000")
    return None if out is None else out.tobytes()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 96, b > 96
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class GlyphBank:
    """Every (class, font) glyph as uint8 BANK_SIZE^2 images, grouped by class.

    Attributes:
        images: uint8 tensor (N, BANK_SIZE, BANK_SIZE), entries of class c at offsets[c]:offsets[c]+counts[c].
        chars: the character of each class.
        fonts: font file names used.
        excluded_digit_like: characters refused because they look like a digit.
    """

    images: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    chars: list[str]
    fonts: list[str]
    excluded_digit_like: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.chars)

    @classmethod
    def build(cls, font_files: list[Path] | None = None, chars: list[str] | None = None,
              font_px: int = 44) -> "GlyphBank":
        """Render the bank; classes are decided in the reference face, glyphs in every face."""
        font_files = find_fonts() if font_files is None else list(font_files)
        if not font_files:
            raise FileNotFoundError("no fonts found; install fonts-dejavu-core fonts-liberation "
                                    "fonts-freefont-ttf fonts-urw-base35")
        chars = candidate_characters() if chars is None else list(chars)
        ref_path = next((p for p in font_files if p.name == REFERENCE_FONT), font_files[0])
        ref = ImageFont.truetype(str(ref_path), font_px)
        ref_missing = _missing_marker(ref)
        digit_masks = [_render(ref, d) for d in "0123456789"]
        kept, kept_masks, digit_like = [], [], []
        for ch in chars:
            if unicodedata.category(ch).startswith("N"):
                continue  # never a digit, whatever the caller passed
            m = _render(ref, ch)
            if m is None or m.tobytes() == ref_missing:
                kept.append(ch)  # judged below by how many faces have it; no reference mask
                kept_masks.append(None)
                continue
            if any(_iou(m, d) > DIGIT_IOU for d in digit_masks if d is not None):
                digit_like.append(ch)
                continue
            if any(k is not None and _iou(m, k) > HOMOGLYPH_IOU for k in kept_masks):
                continue
            kept.append(ch)
            kept_masks.append(m)

        per_class: list[list[np.ndarray]] = [[] for _ in kept]
        for path in font_files:
            font = ImageFont.truetype(str(path), font_px)
            missing = _missing_marker(font)
            for i, ch in enumerate(kept):
                g = _render(font, ch)
                if g is not None and g.tobytes() != missing and g.max() > 64:
                    per_class[i].append(g)
        classes = [(ch, gl) for ch, gl in zip(kept, per_class) if len(gl) >= MIN_FONTS]
        counts = torch.tensor([len(gl) for _, gl in classes])
        offsets = torch.cumsum(counts, 0) - counts
        images = torch.from_numpy(np.stack([g for _, gl in classes for g in gl]))
        return cls(images=images, offsets=offsets, counts=counts, chars=[ch for ch, _ in classes],
                   fonts=[p.name for p in font_files], excluded_digit_like=digit_like)


def _gaussian_kernels(sigma: torch.Tensor, k: int = 5) -> torch.Tensor:
    """One normalised k x k Gaussian per sample: (B, 1, k, k)."""
    r = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    g = g / g.sum(1, keepdim=True)
    return (g[:, :, None] * g[:, None, :])[:, None]


class GlyphBatches:
    """Augmented glyph batches, each a pure function of (seed, step).

    Augmentation (per sample): stroke thinning/thickening, random affine (scale 0.55-1.0 of the
    frame, rotation +-15 deg, shear +-0.25, aspect +-20 %, translation inside the frame), rendered
    at 64 px and area-downsampled to 32 (anti-aliased); with p=0.35 a low-resolution path (area
    down to 8-16 px, optional 17-level quantisation like sklearn digits, bilinear back up); Gaussian
    blur p=0.2; grey (p=0.7) or colour ink/background (contrast >= 0.5) with p=0.3 inversion;
    Gaussian noise (sd <= 0.05) p=0.5.
    (A first, stronger setting, scale from 0.45, low-res p=0.45 down to 7 px, contrast >= 0.35,
    did not leave chance level in 150 steps on this CPU budget.)
    """

    LOWRES_SIZES = (8, 8, 8, 10, 12, 16)

    def __init__(self, bank: GlyphBank, batch_size: int, seed: int, mean: float = 0.5, std: float = 0.5):
        self.bank = bank
        self.batch_size = batch_size
        self.seed = seed
        self.mean, self.std = mean, std

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(step))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (B, 3, 32, 32) normalised with mean/std, labels (B,) int64, shape targets (B, 64)).

        The shape target is the clean ink mask after the geometric augmentation only, area-pooled to
        8x8: what the glyph looks like without blur, noise, colour or inversion (a denoising target).
        """
        g = self.generator(step)
        B = self.batch_size
        u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
        labels = torch.randint(0, self.bank.num_classes, (B,), generator=g)
        idx = self.bank.offsets[labels] + (u(B) * self.bank.counts[labels]).long().clamp(
            max=self.bank.counts[labels] - 1)
        x = self.bank.images[idx].float().div(255.0)[:, None]  # (B,1,48,48)

        # Stroke width: erode, keep, keep, dilate.
        stroke = torch.randint(0, 4, (B,), generator=g)
        dil = F.max_pool2d(x, 3, 1, 1)
        ero = -F.max_pool2d(-x, 3, 1, 1)
        x = torch.where((stroke == 0)[:, None, None, None], ero, x)
        x = torch.where((stroke == 3)[:, None, None, None], dil, x)

        # Affine: forward map glyph -> frame is out = t + s * R * Sh * Asp * in (normalised coords).
        s = 0.55 + 0.45 * u(B)
        s = s * (BANK_SIZE / GLYPH_BOX)  # the glyph box fills the frame when s == 1
        ang = (u(B) * 2 - 1) * math.radians(15)
        shear = (u(B) * 2 - 1) * 0.25
        asp = torch.exp((u(B) * 2 - 1) * 0.2)
        cos, sin = torch.cos(ang), torch.sin(ang)
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        sh = torch.zeros(B, 2, 2)
        sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1, shear, 1
        sc = torch.zeros(B, 2, 2)
        sc[:, 0, 0], sc[:, 1, 1] = s * asp.sqrt(), s / asp.sqrt()
        fwd = rot @ sh @ sc
        span = (1 - s * (GLYPH_BOX / BANK_SIZE)).clamp(min=0.0)
        t = (u(B, 2) * 2 - 1) * span[:, None]
        inv = torch.linalg.inv(fwd)
        theta = torch.cat([inv, -(inv @ t[:, :, None])], 2)
        grid = F.affine_grid(theta, (B, 1, 2 * OUT_SIZE, 2 * OUT_SIZE), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = F.avg_pool2d(x, 2)
        target = F.adaptive_avg_pool2d(x, TARGET_SIZE).flatten(1).clone()

        # Low-resolution path (sklearn digits are 8x8 with 17 grey levels).
        low = u(B) < 0.35
        size_pick = torch.randint(0, len(self.LOWRES_SIZES), (B,), generator=g)
        quant = u(B) < 0.5
        for k, r in enumerate(self.LOWRES_SIZES):
            sel = low & (size_pick == k)
            if not sel.any():
                continue
            small = F.adaptive_avg_pool2d(x[sel], r)
            small = torch.where(quant[sel][:, None, None, None], torch.round(small * 16) / 16, small)
            x[sel] = F.interpolate(small, size=OUT_SIZE, mode="bilinear", align_corners=False)

        # Blur.
        sigma = 0.3 + 0.9 * u(B)
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate").reshape(1, B, OUT_SIZE + 4, OUT_SIZE + 4),
                           _gaussian_kernels(sigma), groups=B).reshape(B, 1, OUT_SIZE, OUT_SIZE)
        x = torch.where((u(B) < 0.2)[:, None, None, None], blurred, x)

        # Ink and background: grey or colour, mostly light ink on dark, contrast at least 0.5.
        ink_lum = 0.65 + 0.35 * u(B)
        bg_lum = (ink_lum - 0.5) * u(B)
        invert = u(B) < 0.3
        ink_lum, bg_lum = torch.where(invert, 1 - ink_lum, ink_lum), torch.where(invert, 1 - bg_lum, bg_lum)
        colour = (u(B) < 0.3)[:, None]
        tint_ink = (ink_lum[:, None] + (u(B, 3) - 0.5) * 0.5).clamp(0, 1)
        tint_bg = (bg_lum[:, None] + (u(B, 3) - 0.5) * 0.5).clamp(0, 1)
        ink = torch.where(colour, tint_ink, ink_lum[:, None].expand(B, 3))
        bg = torch.where(colour, tint_bg, bg_lum[:, None].expand(B, 3))
        x = bg[:, :, None, None] + (ink - bg)[:, :, None, None] * x  # (B,3,32,32)

        noise_sd = 0.05 * u(B) * (u(B) < 0.5)
        x = x + noise_sd[:, None, None, None] * torch.randn(x.shape, generator=g)
        x = x.clamp(0, 1)
        return (x - self.mean) / self.std, labels, target
