"""`--teacher-init FILE`: a teacher built from pretrained ViT weights in a file (the paper starts
every teacher from the ImageNet-pretrained DeiT-Base).

timm itself loads the file (`pretrained_cfg_overlay=dict(file=...)`: no network), with its own
checkpoint filter: the patch embedding is resampled to the run's patch size, the position
embedding to the run's image size, an RGB stem adapted to grey input; the classifier head is
replaced. A `.pth` is read with `torch.load(weights_only=True)` (timm's default), so nothing but
tensors is unpickled; safetensors needs no unpickling at all.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from timm.models.vision_transformer import VisionTransformer

from askexpert.models import ViTArch, accept_any_size

# the timm model whose pretrained config (ImageNet normalisation, classifier and stem names) the file
# stands in for; its shape comes from the run's arch, so any ViT width or depth can be loaded
TIMM_NAME = "deit_base_patch16_224"


class TeacherInitError(SystemExit):
    """A --teacher-init file that cannot initialise this run's teacher, with both architectures named."""


def file_arch(state: dict[str, torch.Tensor]) -> dict:
    """The ViT a state dict holds, read from its tensor shapes: width, depth, MLP size, patch,
    image size (position tokens), input channels and classes."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise TeacherInitError("not a timm/DeiT ViT state dict: no patch_embed.proj.weight or pos_embed")
    w = state["patch_embed.proj.weight"]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    tokens = state["pos_embed"].shape[1] - (1 if "cls_token" in state else 0)
    return {
        "embed_dim": int(w.shape[0]),
        "depth": depth,
        "mlp_hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]) if depth else 0,
        "patch_size": int(w.shape[-1]),
        "img_size": int(round(tokens**0.5)) * int(w.shape[-1]),
        "in_chans": int(w.shape[1]),
        "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
    }


def describe(a: dict) -> str:
    return f"ViT {a['embed_dim']} wide, depth {a['depth']}, MLP {a['mlp_hidden']}, patch {a['patch_size']}, {a['img_size']} px"


def pretrained_vit(arch: ViTArch, path: str | Path, drop_path_rate: float = 0.0) -> VisionTransformer:
    """The teacher of `arch` with the file's weights, resized to `arch`'s patch and image size, and a
    fresh head for `arch.num_classes`. A file of another width, depth or MLP size is refused."""
    path = Path(path)
    if not path.is_file():
        raise TeacherInitError(f"--teacher-init {path}: no such file")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # an unpicklable object, a corrupt file: refused, nothing executed
        raise TeacherInitError(f"--teacher-init {path}: not a weights-only state dict ({type(e).__name__}: {e})") from None
    got = file_arch(state)
    want = {"embed_dim": arch.embed_dim, "depth": arch.depth, "mlp_hidden": int(arch.embed_dim * arch.mlp_ratio)}
    want |= {"patch_size": arch.patch_size, "img_size": arch.img_size}
    if any(got[k] != want[k] for k in ("embed_dim", "depth", "mlp_hidden")):
        raise TeacherInitError(
            f"--teacher-init {path} holds a {describe(got)}; this run's teacher is a {describe(want)} "
            "(--teacher-shape, --head-dim, --depth): give a file of the teacher's width and depth, or change the shape"
        )
    overlay = dict(file=str(path), url=None, hf_hub_id=None, num_classes=got["num_classes"])
    overlay["input_size"] = (got["in_chans"], got["img_size"], got["img_size"])
    model = timm.create_model(
        TIMM_NAME,
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        **arch.timm_shape(),
        drop_path_rate=drop_path_rate,
    )
    model.reset_classifier(arch.num_classes)  # the task's head, whatever the file's was
    return accept_any_size(model)
