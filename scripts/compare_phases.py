"""Head-only training against the two-phase recipe on the demo, side by side; print a markdown table.

    python scripts/compare_phases.py [other overrides applied to every run...]

Runs ``experiment=mobilenet_head`` (the head on the frozen backbone), the same for as many steps as
the two-phase recipe (so extra steps alone are not mistaken for the second phase's effect), and
``experiment=mobilenet_two_phase`` (the head, then the head and the top blocks at 1/100 of the rate,
BatchNorm frozen), all with the same data and seed, export off. The last column counts the parameters
each phase trains, as the run's log line for the phase does.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
from omegaconf import DictConfig

import finetune.compat  # noqa: F401  (first, before tf_slim)
from compare_init import print_table, run_variants
from finetune import pipeline
from finetune.config import compose_config
from finetune.resolve import REQUIRE, data_root, pretrained_checkpoint
from finetune.training.run_graph import build_run_graph

TWO_PHASE = "mobilenet_two_phase"


def trained_parameters(overrides: list[str]) -> str:
    """``name: parameters`` of each phase the config runs, from its built graph (no session, nothing written)."""
    cfg = compose_config(overrides)
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths, REQUIRE))  # the runs made the demo assets already
    built = build_run_graph(cfg, data, pretrained_checkpoint(cfg.restore, cfg.paths, REQUIRE))
    shapes = {name: variable.shape.as_list() for name, variable in built.model.model_variables.items()}
    return "; ".join(f"{ops.phase.name}: {sum(int(np.prod(shapes[name])) for name in ops.trained):,}"
                     for ops in built.model.phases)


def describe_phases(cfg: DictConfig) -> str:
    """What each phase trains, and at which fraction of optimizer.learning_rate: the table's label."""
    def rate(phase: DictConfig) -> str:
        if phase.learning_rate is None or phase.learning_rate == cfg.optimizer.learning_rate:
            return ""
        return f" at 1/{cfg.optimizer.learning_rate / phase.learning_rate:g} of the rate"
    return ", then ".join(f"{phase.name} {list(phase.var_list or cfg.optimizer.var_list)}{rate(phase)}"
                          for phase in cfg.train.phases)


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    two_phase = compose_config([f"experiment={TWO_PHASE}", *overrides])
    total_steps = two_phase.train.steps
    variants = [
        ("mobilenet_head (head only)", ["experiment=mobilenet_head", *overrides]),
        (f"mobilenet_head, train.steps={total_steps} (head only)",
         ["experiment=mobilenet_head", *overrides, f"train.steps={total_steps}"]),
        (f"{TWO_PHASE} ({describe_phases(two_phase)})", [f"experiment={TWO_PHASE}", *overrides]),
    ]
    rows = run_variants(variants)
    parameters = [trained_parameters(variant) for _, variant in variants]
    print(f"Overrides: {' '.join(overrides) or '(none)'}\n")
    print_table("experiment", rows, {"trained parameters per phase": parameters})


if __name__ == "__main__":
    main(sys.argv[1:])
