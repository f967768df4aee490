"""Models through timm's public API give exactly what the hand-built path gave (private
`_pos_embed`, `patch_drop`, `norm_pre`, Blocks rebuilt by hand), on the committed pack's trunk and
tails and on a random model: the pack format and its logits are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from askexpert.models import ExpertTail, SharedTrunk, ViTArch, build_vit, shape_name, trunk_tokens, use_math_attention
from askexpert.pack import Pack

REFERENCE_PACK = Path(__file__).resolve().parent.parent / "packs" / "fashion-mnist"


def old_trunk_tokens(vit, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The previous implementation, on timm's private methods: the reference."""
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for blk in vit.blocks[:n_blocks]:
        x = blk(x)
    return x


def old_tail(arch: ViTArch, n_blocks: int, state: dict) -> nn.Module:
    """The previous tail, with Blocks and the norm built by hand, loaded with the same weights."""

    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*[Block(arch.embed_dim, arch.num_heads, arch.mlp_ratio, qkv_bias=True) for _ in range(n_blocks)])
            self.norm = nn.LayerNorm(arch.embed_dim, eps=1e-6)
            self.head = nn.Linear(arch.embed_dim, arch.num_classes)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.blocks(tokens))[:, 0])

    tail = Tail()
    tail.load_state_dict(state)
    return tail.eval()


@torch.no_grad()
def test_random_model_trunk_and_tail_equal_the_hand_built_path():
    torch.manual_seed(0)
    arch = ViTArch.from_shape("4H", depth=4, patch_size=7, img_size=28, in_chans=1, num_classes=10)
    vit = build_vit(arch).eval()
    x = torch.randn(5, 1, 28, 28)
    reference = old_trunk_tokens(vit, x, 3)
    assert torch.equal(trunk_tokens(vit, x, 3), reference)
    tail = ExpertTail.from_vit(vit, arch, 1).eval()
    assert sorted(tail.state_dict()) == sorted(old_tail(arch, 1, tail.state_dict()).state_dict())  # same keys: same pack format
    assert torch.equal(tail(reference), old_tail(arch, 1, tail.state_dict())(reference))
    assert torch.equal(SharedTrunk(vit, 3).eval()(x), reference)  # pruned in place: last


@pytest.mark.skipif(not (REFERENCE_PACK / "manifest.json").is_file(), reason="no committed pack")
@torch.no_grad()
def test_committed_pack_gives_the_same_logits_through_the_public_api():
    pack = Pack.load(REFERENCE_PACK)
    m = pack.manifest
    images = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (16, 1, m.input.size, m.input.size)).astype(np.float32))
    trunk_vit = pack.load_vit(m.trunk)
    reference = old_trunk_tokens(trunk_vit, images, m.trunk.blocks)
    tokens = pack.load_trunk()(images)
    assert torch.equal(tokens, reference)
    tails = [e for e in pack.expert_entries("compact") if e.kind == "tail"]
    assert tails, "the reference pack has compact experts: tails on a shared trunk"
    for e in tails:
        new = pack.load_expert(e)
        old = old_tail(e.vit_arch, int(e.tail_blocks), pack.state_dict(e))
        assert torch.equal(new(tokens), old(reference)), e.key


def test_shapes_keep_head_counts_at_any_head_dim():
    common = dict(depth=3, patch_size=7, img_size=28, in_chans=1, num_classes=10)
    paper, small = ViTArch.from_shape("4H", **common), ViTArch.from_shape("4H", head_dim=16, **common)
    assert (paper.embed_dim, paper.num_heads) == (256, 4) and (small.embed_dim, small.num_heads) == (64, 4)
    assert shape_name(paper.to_dict()) == "4H" and shape_name(small.to_dict()) == "4H/16"
    assert shape_name(ViTArch.from_shape("12H", head_dim=24, **common).to_dict()) == "12H/24"
    with pytest.raises(ValueError):
        ViTArch.from_shape("5H", **common)


@torch.no_grad()
def test_math_attention_gives_the_fused_kernels_logits():
    torch.manual_seed(0)
    arch = ViTArch.from_shape("6H", head_dim=16, depth=2, patch_size=7, img_size=28, in_chans=1, num_classes=10)
    vit = build_vit(arch).eval()
    x = torch.randn(8, 1, 28, 28)
    fused = vit(x)
    assert torch.allclose(use_math_attention(vit)(x), fused, atol=1e-5)
    assert all(not m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))
