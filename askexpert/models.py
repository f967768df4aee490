"""Model definitions shared by the trainer and the runtime.

Every model is timm's VisionTransformer in one of the paper's DeiT shapes (Table 2). An expert is
either a full ViT or a *tail*: the last blocks, norm and head of a ViT that runs on the tokens of a
frozen trunk shared with the 4H generalist, so the hub runs the trunk once for a mixed batch and
ten experts cost little more than one in memory and in the pack.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# name -> heads; the paper's Table 2 shapes have head dim 64 (3H = 192 wide) and MLP ratio 4. A pack
# may use a smaller head dim with the same head counts ("4H/16" = 4 heads of 16, 64 wide): models
# small enough to be capacity-limited on small images, so that size still matters there.
SHAPES: dict[str, int] = {"3H": 3, "4H": 4, "6H": 6, "12H": 12}
PAPER_HEAD_DIM = 64


def shape_label(shape: str, head_dim: int) -> str:
    """How reports name a shape: '4H' at the paper's head dim 64, '4H/16' at head dim 16."""
    return shape if head_dim == PAPER_HEAD_DIM else f"{shape}/{head_dim}"


def shape_name(arch: dict) -> str:
    """'3H', '4H/16', ... from a manifest arch (heads and width): how reports name models."""
    heads, dim = int(arch.get("num_heads", 0)), int(arch.get("embed_dim", 0))
    if not heads or dim % heads:
        return f"d{dim}"
    return shape_label(f"{heads}H", dim // heads)


@dataclass(frozen=True)
class ViTArch:
    """Everything needed to rebuild a ViT (stored in the pack manifest)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    img_size: int
    in_chans: int
    num_classes: int

    @classmethod
    def from_shape(
        cls, shape: str, *, depth: int, patch_size: int, img_size: int, in_chans: int, num_classes: int, head_dim: int = PAPER_HEAD_DIM
    ) -> "ViTArch":
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
        heads = SHAPES[shape]
        return cls(heads * head_dim, depth, heads, 4.0, patch_size, img_size, in_chans, num_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    def timm_shape(self) -> dict:
        """The shape as timm's ViT keyword arguments (the classes aside: a pretrained start brings its own head)."""
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
        )

    @classmethod
    def from_dict(cls, d: dict) -> "ViTArch":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def fit_input(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """`x` resized (bilinear) to the ViT's image size when it has another: a pack trained at 224 px
    on 32 px CIFAR images is fed them per batch, never stored upscaled (`--img-size`)."""
    size = tuple(vit.patch_embed.img_size)
    if tuple(x.shape[-2:]) == size:
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resize_hook(vit: nn.Module, args: tuple) -> tuple:
    return (fit_input(vit, args[0]), *args[1:])


def accept_any_size(vit: VisionTransformer) -> VisionTransformer:
    """Resize every input to the model's image size in its forward (a pre-hook; weights unchanged)."""
    vit.register_forward_pre_hook(_resize_hook)
    return vit


def build_vit(arch: ViTArch, drop_path_rate: float = 0.0) -> VisionTransformer:
    """A timm VisionTransformer with a class token, as DeiT (without the distillation token); it
    takes images of any size and resizes them to `arch.img_size` (`accept_any_size`)."""
    return accept_any_size(VisionTransformer(**arch.timm_shape(), num_classes=arch.num_classes, drop_path_rate=drop_path_rate))


def use_math_attention(model: nn.Module) -> nn.Module:
    """Plain matmul + softmax attention instead of torch's fused kernel, in every timm attention
    layer of `model`. On a CPU the fused (flash) kernel is the slow path for short sequences: a
    3-block ViT on 17 tokens (28 px, patch 7) trains 4-5x faster without it (measured on this
    repository's 2-core machine); the arithmetic is the same."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def trunk_tokens(vit: VisionTransformer, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Tokens (class token first, then one per patch) after the first `n_blocks` blocks: what a
    shared trunk hands to expert tails. timm's public `forward_intermediates`, stopping early."""
    if not 1 <= n_blocks <= len(vit.blocks):
        raise ValueError(f"a trunk of {n_blocks} blocks on a ViT of {len(vit.blocks)}")
    ((patches, prefix),) = vit.forward_intermediates(
        fit_input(vit, x), indices=[n_blocks - 1], return_prefix_tokens=True, stop_early=True, output_fmt="NLC", intermediates_only=True
    )
    return torch.cat([prefix, patches], dim=1)


class ExpertTail(nn.Module):
    """The last blocks, final norm and classifier of a ViT, run on trunk tokens."""

    def __init__(self, arch: ViTArch, n_blocks: int) -> None:
        super().__init__()
        # The layers of a timm ViT of this shape, built by timm itself: blocks, norm (with timm's eps)
        # and head exactly as in the ViT the tail was trained from; state dict keys stay blocks.*,
        # norm.*, head.* (the pack format).
        vit = build_vit(replace(arch, depth=n_blocks))
        self.blocks, self.norm, self.head = vit.blocks, vit.norm, vit.head

    @classmethod
    def from_vit(cls, vit: VisionTransformer, arch: ViTArch, n_blocks: int) -> "ExpertTail":
        """A tail initialised from the last `n_blocks` of `vit` (a copy: the trunk stays untouched)."""
        tail = cls(arch, n_blocks)
        tail.blocks = copy.deepcopy(nn.Sequential(*list(vit.blocks)[arch.depth - n_blocks :]))
        tail.norm.load_state_dict(vit.norm.state_dict())
        tail.head.load_state_dict(vit.head.state_dict())
        return tail

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(tokens))
        return self.head(x[:, 0])


class SharedTrunk(nn.Module):
    """The first blocks of a ViT, frozen; the part every tail expert shares. The ViT is pruned to
    those blocks with timm's public `prune_intermediate_layers` (the later blocks, final norm and
    head are dropped from memory), and `forward_features` then gives the trunk's tokens."""

    def __init__(self, vit: VisionTransformer, n_blocks: int) -> None:
        super().__init__()
        if not 1 <= n_blocks <= len(vit.blocks):
            raise ValueError(f"a trunk of {n_blocks} blocks on a ViT of {len(vit.blocks)}")
        vit.prune_intermediate_layers(indices=[n_blocks - 1], prune_norm=True, prune_head=True)
        self.vit = vit
        self.n_blocks = n_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(fit_input(self.vit, x))
