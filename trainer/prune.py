"""Structured pruning of a timm ViT to a smaller DeiT shape by loss-based importance.

Importance is first-order Taylor / gradient x activation (Michel et al. 2019, Voita et al. 2019,
DynaBERT): a gate of ones is multiplied into each attention head's output, each MLP hidden neuron
and each channel of the residual stream (embedding, every block output); the importance of a unit
is E_batch |dL/d gate|, i.e. the loss change predicted by removing it, over a few labelled batches.

`prune_vit` keeps the top heads per layer (head dim 64 stays, as in all DeiT shapes), the top MLP
neurons per layer and the top embedding channels (one set for the whole residual stream), kept in
their original order, and slices the weights into a new timm VisionTransformer of the target arch.
Pruning to the source shape reproduces the source model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from askexpert.models import ViTArch, build_vit


@dataclass
class Importance:
    heads: torch.Tensor  # (depth, heads)
    neurons: torch.Tensor  # (depth, mlp hidden)
    channels: torch.Tensor  # (embed dim,)


def compute_importance(vit: VisionTransformer, batches, loss_fn=None, max_batches: int | None = None) -> Importance:
    """Accumulate |dL/dgate| for heads, MLP neurons and embedding channels over `batches` of (x, y)."""
    depth = len(vit.blocks)
    n_heads = vit.blocks[0].attn.num_heads
    head_dim = vit.blocks[0].attn.head_dim
    hidden = vit.blocks[0].mlp.fc1.out_features
    dim = vit.embed_dim
    dev = next(vit.parameters()).device  # measured where the model lives (the GPU in a GPU run)
    head_gate = torch.ones(depth, n_heads, requires_grad=True, device=dev)
    neuron_gate = torch.ones(depth, hidden, requires_grad=True, device=dev)
    chan_gate = torch.ones(dim, requires_grad=True, device=dev)
    imp = Importance(torch.zeros(depth, n_heads), torch.zeros(depth, hidden), torch.zeros(dim))
    hooks = []
    for i, blk in enumerate(vit.blocks):

        def head_hook(mod, args, i=i):
            (x,) = args
            b, n, _ = x.shape
            g = head_gate[i].to(x.dtype).repeat_interleave(head_dim)
            return (x * g,)

        def neuron_hook(mod, args, i=i):
            return (args[0] * neuron_gate[i].to(args[0].dtype),)

        def chan_hook(mod, args, out):
            return out * chan_gate.to(out.dtype)

        hooks.append(blk.attn.proj.register_forward_pre_hook(head_hook))
        hooks.append(blk.mlp.fc2.register_forward_pre_hook(neuron_hook))
        hooks.append(blk.register_forward_hook(chan_hook))
    hooks.append(vit.norm_pre.register_forward_hook(lambda m, a, out: out * chan_gate.to(out.dtype)))
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y))
    was_training = vit.training
    vit.eval()
    for p in vit.parameters():
        p.requires_grad_(False)
    try:
        for n, (x, y) in enumerate(batches):
            if max_batches is not None and n >= max_batches:
                break
            loss = loss_fn(vit(x.to(dev)), y.to(dev))
            gh, gn, gc = torch.autograd.grad(loss, [head_gate, neuron_gate, chan_gate])
            imp.heads += gh.abs().cpu()
            imp.neurons += gn.abs().cpu()
            imp.channels += gc.abs().cpu()
    finally:
        for h in hooks:
            h.remove()
        for p in vit.parameters():
            p.requires_grad_(True)
        vit.train(was_training)
    return imp


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n largest scores, in ascending index order (ties: lower index)."""
    order = torch.argsort(-scores, stable=True)[:n]
    return torch.sort(order).values


def prune_vit(vit: VisionTransformer, src: ViTArch, dst: ViTArch, imp: Importance) -> VisionTransformer:
    """A new ViT of arch `dst` holding the most important heads, neurons and channels of `vit`."""
    head_dim = src.embed_dim // src.num_heads
    if dst.embed_dim // dst.num_heads != head_dim:
        raise ValueError("pruning keeps the head dim: dst embed_dim / num_heads must equal src's")
    if (dst.depth, dst.patch_size, dst.img_size, dst.in_chans, dst.num_classes) != (
        src.depth,
        src.patch_size,
        src.img_size,
        src.in_chans,
        src.num_classes,
    ):
        raise ValueError("pruning changes width, heads and MLP size only")
    if dst.embed_dim > src.embed_dim or dst.num_heads > src.num_heads or dst.mlp_ratio > src.mlp_ratio:
        raise ValueError("cannot prune to a larger shape")
    hidden = int(dst.embed_dim * dst.mlp_ratio)
    ch = _top(imp.channels, dst.embed_dim)
    sd = vit.state_dict()
    out = build_vit(dst)
    new: dict[str, torch.Tensor] = {}
    new["cls_token"] = sd["cls_token"][..., ch]
    new["pos_embed"] = sd["pos_embed"][..., ch]
    new["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][ch]
    new["patch_embed.proj.bias"] = sd["patch_embed.proj.bias"][ch]
    for i in range(src.depth):
        p = f"blocks.{i}."
        heads = _top(imp.heads[i], dst.num_heads)
        hd = (heads[:, None] * head_dim + torch.arange(head_dim)[None]).reshape(-1)  # rows of one of q/k/v
        qkv_rows = torch.cat([hd + j * src.embed_dim for j in range(3)])
        neurons = _top(imp.neurons[i], hidden)
        for n in ("norm1", "norm2"):
            new[p + f"{n}.weight"] = sd[p + f"{n}.weight"][ch]
            new[p + f"{n}.bias"] = sd[p + f"{n}.bias"][ch]
        new[p + "attn.qkv.weight"] = sd[p + "attn.qkv.weight"][qkv_rows][:, ch]
        new[p + "attn.qkv.bias"] = sd[p + "attn.qkv.bias"][qkv_rows]
        new[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][ch][:, hd]
        new[p + "attn.proj.bias"] = sd[p + "attn.proj.bias"][ch]
        new[p + "mlp.fc1.weight"] = sd[p + "mlp.fc1.weight"][neurons][:, ch]
        new[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][neurons]
        new[p + "mlp.fc2.weight"] = sd[p + "mlp.fc2.weight"][ch][:, neurons]
        new[p + "mlp.fc2.bias"] = sd[p + "mlp.fc2.bias"][ch]
    new["norm.weight"] = sd["norm.weight"][ch]
    new["norm.bias"] = sd["norm.bias"][ch]
    new["head.weight"] = sd["head.weight"][:, ch]
    new["head.bias"] = sd["head.bias"]
    expected = set(out.state_dict())
    if set(new) != expected:
        raise RuntimeError(f"pruning does not cover the ViT's parameters: {sorted(expected ^ set(new))}")
    out.load_state_dict({k: v.clone().contiguous() for k, v in new.items()})
    return out
