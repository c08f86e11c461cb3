"""What restoring buys, over repeats: an experiment from the pretrained backbone and from a random one, over
several seeds, with the mean, the 95% interval and the paired tests; prints Markdown.

    python scripts/compare_init.py [--seeds 5] [--keep DIR] [--write FILE]... [--figure PNG]
        [experiment=mobilenet_head] [other overrides...]

Runs ``python -m finetune -m OVERRIDES restore.checkpoint=demo,null train.seed=1,...,N export.enabled=false``
(a sweep, as a user would run it) and summarizes it with ``python -m finetune.tools summarize`` against the
random initialisation (``restore.checkpoint=null``). With the demo backbone it also says how that backbone
was pretrained (``source_task.json`` beside the checkpoint). ``--keep DIR`` keeps the sweep, the tables and the
figures; ``--write FILE`` puts the output between FILE's compare-init markers.
"""
from __future__ import annotations

import sys

from repeats import parse_arguments, publish, report, run_sweep, seeds

NAME = "compare-init"


def demo_recipe() -> str:
    """One line on the demo backbone's pretraining, from the ``source_task.json`` shipped beside it."""
    import finetune.compat  # noqa: F401  (first)
    from finetune import demo

    info = demo.source_task()
    recipe = info["recipe"]
    return (f"Demo backbone: pretrained on {', '.join(info['classes'])} ({recipe['steps']} steps of "
            f"{recipe['batch_size']} images at {recipe['image_size']}x{recipe['image_size']}, {recipe['optimizer']} "
            f"{recipe['learning_rate']} (warmup {recipe['warmup_steps']} steps, cosine), "
            f"BatchNorm decay {recipe['batch_norm_decay']}); source-task val "
            f"accuracy {info['val_accuracy']:.3f}")


def main(argv: list[str]) -> None:
    args, overrides, folder = parse_arguments(argv, __doc__.splitlines()[0], NAME)
    overrides = overrides or ["experiment=mobilenet_head"]
    run_sweep(folder / "sweep", [*overrides, "restore.checkpoint=demo,null", f"train.seed={seeds(args.seeds)}",
                                 "export.enabled=false", "train.eval_every=50"])
    text = (f"Overrides: {' '.join(overrides)}; {args.seeds} seeds\n\n{demo_recipe()}\n\n"
            + report([folder / "sweep"], "restore.checkpoint=null", folder / "tables"))
    publish(text, NAME, args.write, folder / "tables", args.figure)


if __name__ == "__main__":
    main(sys.argv[1:])
