"""Phases: each trains exactly its var_list with its own optimizer; BatchNorm frozen means frozen."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

from finetune import pipeline
from finetune.errors import FinetuneError
from finetune.validate import problems
from finetune.weights import demo
from finetune.weights.sources import read_checkpoint

TOP = "MobilenetV1/Conv2d_11_"  # the block at the cut
BASE = ("experiment=mobilenet_head", "export.enabled=false", "train.checkpoint_every=1000", "train.steps=6")


def _phases(top_batch_norm: str, top_var_list: str = f"[head/, '{TOP}']") -> str:
    return ("train.phases=[{name: head, steps: 3, var_list: [head/]}, "
            f"{{name: top, steps: 3, var_list: {top_var_list}, learning_rate: 0.001, batch_norm: {top_batch_norm}}}]")


def _run(cache: Path, run_dir: Path, *overrides: str) -> dict[str, dict[str, np.ndarray]]:
    """The checkpoints at the end of each phase (steps 3 and 6), and the pretrained demo weights."""
    pipeline.run(compose_config([*BASE, f"paths.cache_dir={cache}", *overrides]), run_dir)
    return {"pretrained": read_checkpoint(demo.ensure_demo_checkpoint(cache)),
            "head": read_checkpoint(str(run_dir / "checkpoints/model.ckpt-3")),
            "top": read_checkpoint(str(run_dir / "checkpoints/model.ckpt-6"))}


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray], names) -> set[str]:
    return {name for name in names if not np.array_equal(before[name], after[name])}


@pytest.mark.slow
def test_each_phase_changes_only_its_declared_variables(demo_cache, tmp_path):
    saved = _run(demo_cache, tmp_path, _phases("frozen"))
    backbone = [name for name in saved["pretrained"] if name in saved["top"]]
    head = [name for name in saved["top"] if name.startswith("head/") and "/momentum" not in name.lower()]
    assert backbone and head
    # Phase 1 trained the head only: the backbone is the pretrained one, bit for bit.
    assert not _changed(saved["pretrained"], saved["head"], backbone)
    # Phase 2 trained the head and the top block's weights and beta; nothing else of the backbone moved,
    # the top block's BatchNorm moving statistics included (batch_norm: frozen).
    moved = _changed(saved["head"], saved["top"], backbone)
    trainable_top = {name for name in backbone if name.startswith(TOP) and "moving_" not in name}
    assert moved == trainable_top, sorted(moved ^ trainable_top)
    assert _changed(saved["head"], saved["top"], head) == set(head)
    # Each phase has its own optimizer state: phase 2's slots exist for the top block, phase 1's do not.
    assert any(name.startswith(TOP) and name.endswith("/momentum_top") for name in saved["top"])
    assert not any(name.startswith(TOP) and name.endswith("/Momentum") for name in saved["top"])


@pytest.mark.slow
def test_batch_norm_train_moves_the_moving_statistics_and_frozen_does_not(demo_cache, tmp_path):
    statistics = lambda saved: [name for name in saved["top"] if name.startswith("MobilenetV1/") and "moving_" in name]
    frozen = _run(demo_cache, tmp_path / "frozen", _phases("frozen"))
    assert not _changed(frozen["pretrained"], frozen["top"], statistics(frozen))
    trained = _run(demo_cache, tmp_path / "train", _phases("train"))
    assert _changed(trained["head"], trained["top"], statistics(trained))  # so the frozen check can fail
    assert not _changed(trained["pretrained"], trained["head"], statistics(trained))  # phase 1 was frozen


@pytest.mark.slow
def test_a_phase_whose_var_list_selects_nothing_names_its_key(demo_cache, tmp_path):
    with pytest.raises(FinetuneError, match=r"train\.phases\[1\]\.var_list"):
        _run(demo_cache, tmp_path, _phases("frozen", "['Nothing/']"))


@pytest.mark.parametrize("phases, steps, expected", [
    ("[{name: a, steps: 3}, {name: a, steps: 3}]", 6, "more than one phase a"),
    ("[{name: a, steps: 0}, {name: b, steps: 3}]", 3, "train.phases[0].steps"),
    ("[{name: a, steps: 3}, {name: b, steps: 3}]", 5, "train.steps=6"),
    ("[{name: a, steps: 3, var_list: ['(']}]", 3, "train.phases[0].var_list"),
    ("[{name: a, steps: 3, optimizer: adamw}]", 3, "train.phases[0].optimizer"),
    ("[{name: a, steps: 3, batch_norm: fixed}]", 3, "train.phases[0].batch_norm"),
    ("[{name: a, steps: 3, learning_rate: -1}]", 3, "train.phases[0].learning_rate"),
])
def test_bad_phases_are_named(phases, steps, expected):
    found = problems(compose_config(["experiment=mobilenet_head", f"train.phases={phases}", f"train.steps={steps}"]))
    assert len(found) == 1 and expected in found[0], found


def test_the_two_phase_experiment_validates_and_adds_up():
    cfg = compose_config(["experiment=mobilenet_two_phase"])
    assert not problems(cfg)
    assert [phase.name for phase in cfg.train.phases] == ["head", "top_blocks"]
    assert sum(phase.steps for phase in cfg.train.phases) == cfg.train.steps
