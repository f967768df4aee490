"""Step 5, partition: the classes grouped into S subsets, one expert per combination of at most k
of them: the data set's superclasses (or the documented Fashion-MNIST garment groups), the paper's
Table 7 lists, or the confusions of the 3H generalist on the validation split."""

from __future__ import annotations

from askexpert.routing import expert_key
from trainer import partition as part
from trainer import workfiles as files
from trainer.context import RunContext


def run(ctx: RunContext) -> dict:
    if (done := ctx.info("partition")) is not None:
        return done
    cfg, d = ctx.cfg, ctx.data
    S = cfg.subsets
    if cfg.partition == "superclass":
        if d.superclass is not None:
            p = part.superclass_partition(d.superclass, S)
            names = part.subset_names_for(p, d.classes, d.superclass_names, d.superclass)
            how = f"superclasses grouped into {S} balanced subsets"
        elif cfg.dataset == "fashion-mnist" and S == 4:
            from trainer.export import FASHION_MNIST_PARTITION, FASHION_MNIST_SUBSETS

            p, names = list(FASHION_MNIST_PARTITION), list(FASHION_MNIST_SUBSETS)
            how = "the documented Fashion-MNIST grouping by garment kind (trainer/export.py)"
        else:
            raise SystemExit(f"{cfg.dataset} has no superclasses for S={S}: use --partition confusion")
    elif cfg.partition == "paper":
        if d.superclass is None:
            raise SystemExit(f"{cfg.dataset} has no superclasses: --partition paper is Table 7's CIFAR-100 grouping")
        try:
            p = part.paper_partition(d.superclass, d.superclass_names, S)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        names = part.subset_names_for(p, d.classes, d.superclass_names, d.superclass)
        how = f"the paper's Table 7 superclass lists for S={S}"
    elif cfg.partition == "confusion":
        ctx.need("prune")
        g = ctx.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
        p = part.confusion_partition(d.y_val.numpy(), ctx.logits(g, d.x_val).numpy(), S, cfg.k)
        names = part.subset_names_for(p, d.classes)
        how = f"confusion of the {cfg.edge_shape} generalist on the validation split, balanced, S={S}"
    else:
        raise SystemExit(f"unknown partition {cfg.partition!r}")
    info = {"partition": p, "subset_names": names, "how": how, "experts": [expert_key(c) for c in part.expert_list(S, cfg.k)]}
    if (ctx.work / files.generalist(cfg.edge_shape)).is_file():
        g = ctx.load_vit(cfg.edge_shape, files.generalist(cfg.edge_shape))
        info["val_topk_within_one_subset"] = part.topk_within_subset_rate(ctx.logits(g, d.x_val).numpy(), p, cfg.k)
    ctx.set_info("partition", info)
    ctx.log(f"[partition] {how}: {p}")
    return info
