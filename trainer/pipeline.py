"""The training steps of a model pack and their chaining (`trainer pack`).

Every step reads and writes a work folder (default `runs/<dataset>`): fp32 safetensors, JSON
records, per-fit checkpoints. A step whose outputs exist is skipped, so re-running the same command
after an interruption resumes where it stopped (a fit resumes after its last finished epoch).

The steps, one module each in `trainer/steps/` (numbered in this order), share a `RunContext`
(`trainer/context.py`: recipe, work folder, data, device, log):
  premise   the ladder of generalists at each setting of --premise-grid (runs only when given).
  teacher   a large generalist (default 6H) trained with cross-entropy on the whole training split.
  prune     pruning of the teacher to the 4H and 3H shapes by loss-based importance, then
            distillation of both (CE(y)/2 + CE(teacher hard label)/2); 3H is the edge generalist,
            4H the shared trunk and the 4H baseline.
  baselines same-size generalists: 4H (from `prune`) and 6H (the teacher when it is 6H, else
            pruned and distilled from it).
  partition superclass grouping, or confusion grouping from the 3H generalist on validation.
  subset-teachers  per-subset recipe: a teacher M_I per expert, fine-tuned progressively.
  experts   full 4H experts pruned from M_I and trained with eq. 1-3 (progressive), with the
            static (constant W) and uniform (weight 1) controls on the same init, data and
            schedule, for several seeds; and compact (tail) experts on the shared 4H trunk.
  report    test-split evaluation, reports (JSON + Markdown) and test logits.
Then `trainer/assemble.py` exports the pack: fp16 safetensors, manifest, reports, logits (size-checked).
"""

from __future__ import annotations

from trainer.config import Config
from trainer.context import RunContext
from trainer.steps import (
    s1_premise,
    s2_teacher,
    s3_prune,
    s4_baselines,
    s5_partition,
    s6_subset_teachers,
    s7_experts,
    s8_report,
)

# The steps of `trainer pack` in their order; each reads what earlier ones wrote to the work folder.
STEP_MODULES = {
    "premise": s1_premise,
    "teacher": s2_teacher,
    "prune": s3_prune,
    "baselines": s4_baselines,
    "partition": s5_partition,
    "subset-teachers": s6_subset_teachers,
    "experts": s7_experts,
    "report": s8_report,
}
STEPS = tuple(STEP_MODULES)


def needs(cfg: Config, step: str) -> list[str]:
    """The earlier steps whose records `step` reads."""
    return {
        "prune": ["teacher"],
        "baselines": ["prune"],
        "partition": ["prune"] if cfg.partition == "confusion" else [],  # the 3H's confusions
        "subset-teachers": ["teacher", "prune", "partition"],
        "experts": ["prune", "partition", "subset-teachers"],
        "report": ["baselines", "partition", "experts"],
    }.get(step, [])


def steps_for(cfg: Config, last: str) -> list[str]:
    """`last` and every step it needs (transitively), in the order of STEPS: what `trainer <step>` runs."""
    want, todo = {last}, [last]
    while todo:
        for step in needs(cfg, todo.pop()):
            if step not in want:
                want.add(step)
                todo.append(step)
    return [s for s in STEPS if s in want]


def run_step(ctx: RunContext, step: str):
    """One step of STEPS; a finished step returns its record at once."""
    return STEP_MODULES[step].run(ctx)


def run_until(ctx: RunContext, last: str) -> None:
    """`last` and every step it needs, in the order of STEPS."""
    for step in steps_for(ctx.cfg, last):
        run_step(ctx, step)
