"""The files of a trainer work folder and of a pack, named once.

A work folder holds fp32 weights, JSON records (one per finished step, `<step>.json`) and per-fit
checkpoints; every step finds its inputs there by these names, so steps can be run one at a time.
"""

from __future__ import annotations

CONFIG = "config.json"
TEACHER = "teacher.safetensors"  # M_D, the generalist teacher
TEACHER_LABELS = "teacher-labels.safetensors"  # M_D's hard labels on the training split ("train")
TEST_LOGITS = "eval/logits-test-all.npz"  # every model's test logits (fp16) and the labels


def record(step: str) -> str:
    """A step's record; its presence marks the step done."""
    return f"{step}.json"


def checkpoints(fit: str) -> str:
    return f"ckpt/{fit}"


def generalist(shape: str) -> str:
    """A generalist of one shape (pruned and distilled, or the teacher's own shape)."""
    return f"generalist-{shape}.safetensors"


def subset_teacher(key: str) -> str:
    return f"subset-teachers/teacher-{key}.safetensors"


def subset_teacher_labels(key: str) -> str:
    """M_I's hard labels on the experts' training samples ("train")."""
    return f"subset-teachers/labels-{key}.safetensors"


def expert_init(key: str) -> str:
    """m_I's start: M_I pruned to the expert shape."""
    return f"experts/init/expert-{key}.safetensors"


def expert(kind: str, key: str, seed: int, epochs: int | None = None) -> str:
    """An expert of one kind and seed; `epochs`: trained for another count than the recipe's."""
    return f"experts/{f'epochs{epochs}/' if epochs else ''}{kind}/seed{seed}/expert-{key}.safetensors"


def compact_expert(key: str) -> str:
    return f"experts/compact/expert-{key}.safetensors"


# in the pack folder
def pack_generalist(shape: str) -> str:
    return f"generalist-{shape}.safetensors"


def pack_baseline(shape: str) -> str:
    return f"baseline-{shape}.safetensors"


def pack_expert(key: str) -> str:
    return f"expert-{key}.safetensors"


def pack_compact_expert(key: str) -> str:
    return f"compact-expert-{key}.safetensors"


PACK_REPORT_JSON = "reports/report.json"
PACK_REPORT_MD = "reports/report.md"
PACK_TEST_LOGITS = "eval/logits-test.npz"
