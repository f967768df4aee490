"""The model pack: a folder with manifest.json and safetensors checkpoints.

The trainer writes packs, the edge node and the expert hub load them. Nothing here unpickles:
weights come from safetensors and are checked against the sha256 in the manifest.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file

from askexpert.models import ExpertTail, SharedTrunk, ViTArch, build_vit
from askexpert.quality import QualityBand
from askexpert.routing import expert_key, required_experts

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class PackError(RuntimeError):
    """A pack that cannot be used: missing, malformed, inconsistent or corrupt."""


class InputSpec(BaseModel):
    size: int = Field(gt=0)
    channels: Literal[1, 3]
    mean: list[float]
    std: list[float]


class ModelEntry(BaseModel):
    """One checkpoint: a full ViT, or an expert tail that runs on the shared trunk."""

    file: str
    sha256: str
    arch: dict
    kind: Literal["vit", "tail"] = "vit"
    tail_blocks: int | None = None
    metrics: dict = Field(default_factory=dict)

    @property
    def vit_arch(self) -> ViTArch:
        return ViTArch.from_dict(self.arch)


class TrunkEntry(ModelEntry):
    blocks: int = Field(gt=0, description="how many leading blocks of this ViT the tails share")


class ExpertEntry(ModelEntry):
    subset: list[int]

    @property
    def key(self) -> str:
        return expert_key(self.subset)


ExpertForm = Literal["full", "compact"]


class ServedForm(BaseModel):
    """The expert form a hub serves by default (`expert_form: auto`) and why: chosen on the
    validation split at the pack's tau, never on the test split (trainer/served_form.py)."""

    form: ExpertForm
    split: Literal["validation"] = "validation"
    tau: float = Field(ge=0.0, le=1.0)
    val_items: int = Field(gt=0)
    val_system_top1: dict[str, float] = Field(description="Algorithm 1's top-1 (%) at tau with each form")
    per_frame_ms: dict[str, float] = Field(description="inference time of one expert of each form, per frame")
    measured_on: str = Field(description="the CPU or GPU the times were measured on")
    rule: str


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    name: str
    dataset: str
    classes: list[str]
    partition: list[int] = Field(description="subset index (0-based) for each class")
    subset_names: list[str]
    k: int = Field(ge=1)
    tau: float = Field(ge=0.0, le=1.0)
    input: InputSpec
    generalist: ModelEntry
    trunk: TrunkEntry | None = None
    experts: list[ExpertEntry]
    baselines: dict[str, ModelEntry] = Field(default_factory=dict)
    full_experts: list[ExpertEntry] = Field(default_factory=list)  # packs before compact_experts: full ViTs besides tails
    compact_experts: list[ExpertEntry] = Field(default_factory=list, description="tails on the trunk, one per expert")
    training: dict = Field(default_factory=dict)
    reports: dict = Field(default_factory=dict)
    quality: QualityBand | None = Field(None, description="the label-free signals expected at tau (askexpert/quality.py)")
    served_form: ServedForm | None = Field(None, description="the expert form hubs serve by default; none: full")

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if len(self.partition) != len(self.classes):
            raise ValueError("partition must give one subset index per class")
        n = len(self.subset_names)
        if any(not 0 <= s < n for s in self.partition):
            raise ValueError(f"partition indices must lie in 0..{n - 1}")
        for e in self.experts + self.full_experts + self.compact_experts:
            if not e.subset or any(not 0 <= s < n for s in e.subset):
                raise ValueError(f"expert subset {e.subset} out of range")
            if e.kind == "tail" and self.trunk is None:
                raise ValueError("tail experts need a trunk")
        for group in (self.experts, self.compact_experts):
            keys = [e.key for e in group]
            if len(set(keys)) != len(keys):
                raise ValueError("duplicate experts")
        return self

    @property
    def n_subsets(self) -> int:
        return len(self.subset_names)

    @property
    def pack_id(self) -> str:
        """Hash of classes and partition: an edge and a hub agree on routing iff these match."""
        blob = json.dumps({"classes": self.classes, "partition": self.partition}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def missing_experts(self) -> list[str]:
        have = {e.key for e in self.experts}
        return [expert_key(c) for c in required_experts(self.n_subsets, self.k) if expert_key(c) not in have]


def manifest_version(manifest_bytes: bytes) -> str:
    """A pack's version: the hash of its manifest, which holds every weight file's sha256, so two
    packs with the same routing (pack_id) but other weights or tau are told apart."""
    return hashlib.sha256(manifest_bytes).hexdigest()[:12]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Pack:
    """A loaded, validated pack folder. Weights load lazily, per model."""

    def __init__(self, root: Path, manifest: Manifest, version: str = "") -> None:
        self.root = root
        self.manifest = manifest
        self.version = version or manifest_version(manifest.model_dump_json().encode())

    @classmethod
    def load(cls, root: str | Path) -> "Pack":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise PackError(f"no {MANIFEST} in {root}: not a model pack")
        text = path.read_bytes()
        try:
            manifest = Manifest.model_validate_json(text)
        except ValidationError as exc:
            raise PackError(f"invalid manifest {path}: {exc}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise PackError(f"pack format {manifest.format_version} is not supported (want {FORMAT_VERSION})")
        for entry in cls._entries(manifest):
            if not (root / entry.file).is_file():
                raise PackError(f"pack {root} lacks {entry.file}")
        return cls(root, manifest, manifest_version(text))

    @staticmethod
    def _entries(m: Manifest) -> list[ModelEntry]:
        return [m.generalist, *([m.trunk] if m.trunk else []), *m.experts, *m.baselines.values(), *m.full_experts, *m.compact_experts]

    @property
    def entries(self) -> list[ModelEntry]:
        """Every checkpoint the manifest names (each file once)."""
        return list({e.file: e for e in self._entries(self.manifest)}.values())

    @cached_property
    def pack_id(self) -> str:
        """The manifest's, hashed once: the hub checks it for every frames message."""
        return self.manifest.pack_id

    def verify(self, entries: list[ModelEntry]) -> None:
        """Check every file of `entries` against its sha256 before any is used (PackError if one is
        corrupt): a pack swapped in at run time is refused whole, not found broken half-loaded."""
        for entry in entries:
            path = self.root / entry.file
            if (digest := sha256_file(path)) != entry.sha256:
                raise PackError(f"{path} is corrupt: sha256 {digest[:12]} != manifest {entry.sha256[:12]}")

    @cached_property
    def experts(self) -> dict[str, ExpertEntry]:
        return {e.key: e for e in self.manifest.experts}

    def resolve_form(self, form: str) -> str:
        """`auto`: the form the manifest chose on validation (packs without a choice: full)."""
        if form != "auto":
            return form
        return self.manifest.served_form.form if self.manifest.served_form else "full"

    def expert_entries(self, form: str = "auto") -> list[ExpertEntry]:
        """The experts a hub serves: the pack's whole-ViT experts (`full`), its compact tails on the
        shared trunk (`compact`), or the form the manifest chose on validation (`auto`)."""
        form = self.resolve_form(form)
        if form == "full":
            return list(self.manifest.experts)
        if form == "compact":
            if not self.manifest.compact_experts:
                raise PackError(f"pack {self.root} has no compact experts")
            return list(self.manifest.compact_experts)
        raise PackError(f"unknown expert form {form!r}: auto, full or compact")

    def state_dict(self, entry: ModelEntry) -> dict[str, torch.Tensor]:
        """Weights of one entry, checked against the manifest's sha256, as float32."""
        path = self.root / entry.file
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise PackError(f"{path} is corrupt: sha256 {digest[:12]} != manifest {entry.sha256[:12]}")
        return {k: v.float() for k, v in load_file(path).items()}

    def load_vit(self, entry: ModelEntry) -> torch.nn.Module:
        model = build_vit(entry.vit_arch)
        self._load_into(model, entry)
        return model.eval()

    def load_generalist(self) -> torch.nn.Module:
        return self.load_vit(self.manifest.generalist)

    def load_trunk(self) -> SharedTrunk:
        if self.manifest.trunk is None:
            raise PackError("this pack has no shared trunk")
        return SharedTrunk(self.load_vit(self.manifest.trunk), self.manifest.trunk.blocks).eval()

    def load_expert(self, entry: ExpertEntry) -> torch.nn.Module:
        """A full ViT expert, or a tail (run it on load_trunk()'s tokens)."""
        if entry.kind == "vit":
            return self.load_vit(entry)
        tail = ExpertTail(entry.vit_arch, int(entry.tail_blocks or 0))
        self._load_into(tail, entry)
        return tail.eval()

    def _load_into(self, model: torch.nn.Module, entry: ModelEntry) -> None:
        try:
            model.load_state_dict(self.state_dict(entry))
        except RuntimeError as exc:
            raise PackError(f"{entry.file} does not match its arch in the manifest: {exc}") from exc


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> str:
    """Write a state dict as safetensors (fp16 by default, to fit the pack budget); return sha256."""
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    return sha256_file(path)


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
