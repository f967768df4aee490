"""Pruning by loss-based importance on tiny ViTs."""

import torch

from askexpert.models import ViTArch, build_vit
from trainer.prune import Importance, compute_importance, prune_vit


def arch(dim, heads, depth=2):
    return ViTArch(dim, depth, heads, 4.0, 7, 28, 1, 10)


def data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_pruning_nothing_reproduces_outputs():
    torch.manual_seed(0)
    a = arch(192, 3)
    vit = build_vit(a).eval()
    x, y = data()
    imp = compute_importance(vit, [(x, y)])
    same = prune_vit(vit, a, a, imp).eval()
    with torch.no_grad():
        assert torch.equal(same(x), vit(x))


def test_dead_head_has_no_importance_and_is_dropped():
    torch.manual_seed(1)
    src, dst = arch(192, 3), arch(128, 2)
    vit = build_vit(src).eval()
    with torch.no_grad():
        for blk in vit.blocks:  # head 1 of every layer writes nothing: its proj columns are zero
            blk.attn.proj.weight[:, 64:128] = 0
    x, y = data()
    imp = compute_importance(vit, [(x, y)])
    assert torch.all(imp.heads[:, 1] == 0)
    assert torch.all(imp.heads[:, [0, 2]] > 0)
    small = prune_vit(vit, src, dst, imp)
    sd, ss = vit.state_dict(), small.state_dict()
    ch = torch.sort(torch.argsort(-imp.channels, stable=True)[:128]).values
    for i in range(2):
        q = sd[f"blocks.{i}.attn.qkv.weight"]
        # kept heads 0 and 2: q rows 0..63 and 128..191, restricted to the kept channels
        want_q = torch.cat([q[0:64], q[128:192]])[:, ch]
        assert torch.equal(ss[f"blocks.{i}.attn.qkv.weight"][:128], want_q)
        v = q[384:576]
        assert torch.equal(ss[f"blocks.{i}.attn.qkv.weight"][256:], torch.cat([v[0:64], v[128:192]])[:, ch])
    with torch.no_grad():
        assert small(x).shape == (16, 10)


def test_pruning_keeps_top_heads_neurons_and_channels():
    torch.manual_seed(2)
    src, dst = arch(384, 6, depth=1), arch(256, 4, depth=1)
    vit = build_vit(src)
    imp = Importance(
        heads=torch.tensor([[0.1, 5.0, 0.2, 4.0, 3.0, 2.0]]),
        neurons=torch.arange(1536, dtype=torch.float32)[None],  # keeps the last 1024
        channels=-torch.arange(384, dtype=torch.float32),  # keeps the first 256
    )
    small = prune_vit(vit, src, dst, imp)
    sd, ss = vit.state_dict(), small.state_dict()
    heads = [1, 3, 4, 5]
    rows = torch.cat([torch.arange(h * 64, h * 64 + 64) for h in heads])
    assert torch.equal(ss["blocks.0.attn.qkv.weight"][:256], sd["blocks.0.attn.qkv.weight"][rows][:, :256])
    assert torch.equal(ss["blocks.0.attn.proj.weight"], sd["blocks.0.attn.proj.weight"][:256][:, rows])
    assert torch.equal(ss["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.fc1.weight"][512:, :256])
    assert torch.equal(ss["blocks.0.mlp.fc2.weight"], sd["blocks.0.mlp.fc2.weight"][:256, 512:])
    assert torch.equal(ss["head.weight"], sd["head.weight"][:, :256])
    assert type(small).__name__ == "VisionTransformer" and small.embed_dim == 256
