"""The startup check of the timm internals that `vit.py` and `swin.py` re-state (`e2vpt/models/timm_check.py`):
it passes on the pinned timm, and a timm that lacks or changed what a re-statement uses is refused with
one message naming the installed version, what is missing and the version e2vpt is tested with."""

import re
from pathlib import Path

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from e2vpt.errors import BackboneError
from e2vpt.models.swin import PromptedSwin
from e2vpt.models.timm_check import TESTED_TIMM, check_timm
from e2vpt.models.vit import PromptedViT

REQUIREMENTS = Path(__file__).parent.parent / "requirements.txt"


@pytest.fixture(autouse=True)
def fresh_check():
    """Each test sees the check run again (it is cached per process), and leaves no cached result behind."""
    check_timm.cache_clear()
    yield
    check_timm.cache_clear()


def tiny_vit():
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=0).eval()


def tiny_swin():
    return SwinTransformer(img_size=16, patch_size=4, window_size=2, embed_dim=8, depths=(2,), num_heads=(2,),
                           num_classes=0).eval()


def refusal(error: pytest.ExceptionInfo, source: str) -> str:
    message = str(error.value)
    assert f"installed timm {timm.__version__} " in message and "re-states" in message and source in message
    assert message.endswith(f"e2vpt is tested with timm {TESTED_TIMM}: pip install timm=={TESTED_TIMM}")
    return message


def test_the_tested_version_is_the_one_requirements_pin():
    pins = re.findall(r"^timm==(\S+)$", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert pins == [TESTED_TIMM]


def test_installed_timm_passes_once_per_process_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    check_timm("vit")
    check_timm("swin")
    assert torch.equal(torch.rand(5), expected)  # tiny models built under a forked RNG: initialisation unchanged
    PromptedViT(tiny_vit(), 3, prompt_len=2, segments=4)
    PromptedSwin(tiny_swin(), 3, prompt_len=2, segments=4)
    assert check_timm.cache_info().hits == 2 and check_timm.cache_info().misses == 2
    with pytest.raises(ValueError, match="family"):
        check_timm("convnext")


def test_a_renamed_attention_attribute_refuses_the_vit(monkeypatch):
    """As if a timm release renamed `Attention.head_dim`: the real class, built by timm, lacks it."""
    original = Attention.__init__

    def renamed(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.dim_head = self.__dict__.pop("head_dim")

    monkeypatch.setattr(Attention, "__init__", renamed)
    backbone = tiny_vit()
    assert not hasattr(backbone.blocks[0].attn, "head_dim")
    with pytest.raises(BackboneError) as error:
        PromptedViT(backbone, 3, prompt_len=2, segments=4)
    assert "missing Attention.head_dim;" in refusal(error, "e2vpt/models/vit.py")
    check_timm("swin")  # Swin does not use it


def test_a_removed_window_attention_method_refuses_the_swin(monkeypatch):
    monkeypatch.delattr(WindowAttention, "_get_rel_pos_bias")
    with pytest.raises(BackboneError) as error:
        PromptedSwin(tiny_swin(), 3, prompt_len=2, segments=4)
    message = refusal(error, "e2vpt/models/swin.py")
    assert "missing WindowAttention._get_rel_pos_bias;" in message
    check_timm("vit")  # the ViT does not use it


def test_a_new_required_block_argument_is_refused(monkeypatch):
    """The re-stated Swin block honours the tokens only: a forward that now needs a mask is refused."""
    original = SwinTransformerBlock.forward

    def forward(self, x, attn_mask):
        return original(self, x)

    monkeypatch.setattr(SwinTransformerBlock, "forward", forward)
    with pytest.raises(BackboneError) as error:
        check_timm("swin")
    assert "calls that no longer bind: SwinTransformerBlock.forward(self, x, attn_mask);" in refusal(error, "swin.py")


def test_a_block_that_computes_something_else_is_refused(monkeypatch):
    """Every attribute still there, but timm's Block.forward changed (here: post-norm): the re-statement
    would silently compute the old block, so the check compares the two on a tiny model."""

    def post_norm(self, x, attn_mask=None, is_causal=False):
        x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x))))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))

    monkeypatch.setattr(Block, "forward", post_norm)
    with pytest.raises(BackboneError) as error:
        PromptedViT(tiny_vit(), 3, segments=4)
    assert "Block.forward (with its Attention.forward) of block 0 no longer equals the re-stated forward" in \
        refusal(error, "vit.py")
