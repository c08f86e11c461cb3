"""Phases: each trains exactly its var_list with its own optimizer state; BatchNorm frozen means frozen.

The runs are the tiny profile's (test_mobilenet_v1: Conv2d_0 and three separable blocks, cut at
Conv2d_3_pointwise): the head, then the head and the two blocks below the cut. One such run, BatchNorm
frozen, is shared by the tests that read it."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, compose_config, run_pipeline, tiny_config

from finetune.errors import FinetuneError
from finetune.validate import problems, validate
from finetune import demo
from finetune.weights.readers import read_checkpoint

STEPS = 3  # each phase's
TOP_BLOCKS = "MobilenetV1/Conv2d_[23]_"  # the two blocks below the tiny profile's cut, Conv2d_3_pointwise
# Only the phase ends are saved (the Saver keeps the last 3: both stay).
BASE = ("export.enabled=false", "train.checkpoint_every=1000")
# A phase's optimizer is named OPTIMIZER_PHASE, and its slot variables VARIABLE/OPTIMIZER_PHASE.
HEAD_SLOT, TOP_SLOT = "/momentum_head", "/momentum_top_blocks"


@functools.cache
def _top_rate() -> float:
    """1/100 of the experiment's learning rate, for the second phase (as experiment=mobilenet_two_phase)."""
    return compose_config(["experiment=mobilenet_head"]).optimizer.learning_rate / 100


def _phases(batch_norm: str, top_var_list: str = f"[head/, '{TOP_BLOCKS}']") -> list[str]:
    return [f"train.steps={2 * STEPS}",
            f"train.phases=[{{name: head, steps: {STEPS}, var_list: [head/]}}, {{name: top_blocks, steps: {STEPS}, "
            f"var_list: {top_var_list}, learning_rate: {_top_rate()}, batch_norm: {batch_norm}}}]"]


def _run(cache: Path, data: Path, run_dir: Path, *overrides: str) -> dict:
    """Train the tiny profile; return the metrics, the pretrained demo weights and the checkpoints at the end of
    each phase."""
    metrics = run_pipeline(tiny_config(cache, data, *BASE, *overrides), run_dir)
    return {"metrics": metrics, "pretrained": read_checkpoint(demo.checkpoint()),
            "head": read_checkpoint(str(run_dir / f"checkpoints/model.ckpt-{STEPS}")),
            "top": read_checkpoint(str(run_dir / f"checkpoints/model.ckpt-{2 * STEPS}"))}


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray], names) -> set[str]:
    return {name for name in names if not np.array_equal(before[name], after[name])}


def _model_variables(saved: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(backbone variables: those restored from the pretrained checkpoint, head variables); no optimizer slots."""
    names = [name for name in saved
             if name not in ("global_step", "train_seed") and not name.endswith((HEAD_SLOT, TOP_SLOT))]
    backbone = [name for name in names if name.startswith("MobilenetV1/")]
    head = [name for name in names if name.startswith("head/")]
    assert backbone and head and len(backbone) + len(head) == len(names), names
    return backbone, head


def _statistics(names: list[str]) -> list[str]:
    return [name for name in names if re.search(r"/moving_(mean|variance)$", name)]


@pytest.fixture(scope="module")
def frozen_run(demo_cache, tiny_data, tmp_path_factory) -> dict:
    """The head for 3 steps, then the head and the top two blocks for 3 at 1/100 of the rate, BatchNorm frozen."""
    return _run(demo_cache, tiny_data, tmp_path_factory.mktemp("two_phase"), *_phases("frozen"))


@pytest.mark.slow
def test_each_phase_changes_only_its_declared_variables(frozen_run):
    pretrained, head_end, top_end = frozen_run["pretrained"], frozen_run["head"], frozen_run["top"]
    backbone, head = _model_variables(top_end)
    assert set(backbone) <= set(pretrained)
    # Phase 1 trained the head only: the backbone is the pretrained one, bit for bit.
    assert not _changed(pretrained, head_end, backbone)
    # Phase 2 trained the head and the top blocks' weights, gamma and beta (MobileNet v1's BatchNorm
    # scales): exactly those moved, the top blocks' moving statistics did not.
    declared = {name for name in backbone if re.match(TOP_BLOCKS, name) and name not in _statistics(backbone)}
    assert {name.rsplit("/", 1)[1] for name in declared} == {"depthwise_weights", "weights", "gamma", "beta"}
    assert _changed(head_end, top_end, backbone) == declared
    assert _changed(head_end, top_end, head) == set(head)  # the head's own BatchNorm always trains


@pytest.mark.slow
def test_each_phase_has_its_own_optimizer_state(frozen_run):
    head_end, top_end = frozen_run["head"], frozen_run["top"]
    backbone, head = _model_variables(top_end)
    trained = {phase: {name[:-len(slot)] for name in top_end if name.endswith(slot)}
               for phase, slot in (("head", HEAD_SLOT), ("top_blocks", TOP_SLOT))}
    head_trainable = set(head) - set(_statistics(head))
    top_blocks_trainable = {name for name in backbone if re.match(TOP_BLOCKS, name)} - set(_statistics(backbone))
    assert trained["head"] == head_trainable
    assert trained["top_blocks"] == head_trainable | top_blocks_trainable
    head_slots = [name + HEAD_SLOT for name in trained["head"]]
    top_slots = [name + TOP_SLOT for name in trained["top_blocks"]]
    # Phase 2 starts from fresh state (its slots are still zero when phase 1 ends) and leaves phase 1's alone.
    assert all(head_end[name].any() for name in head_slots)
    assert not any(head_end[name].any() for name in top_slots)
    assert all(top_end[name].any() for name in top_slots)
    assert not _changed(head_end, top_end, head_slots)


@pytest.mark.slow
def test_a_second_phase_leaves_the_first_as_a_one_phase_run_would(frozen_run, demo_cache, tiny_data, tmp_path):
    run_pipeline(tiny_config(demo_cache, tiny_data, *BASE, f"train.steps={STEPS}"), tmp_path)
    alone = read_checkpoint(str(tmp_path / f"checkpoints/model.ckpt-{STEPS}"))
    backbone, head = _model_variables(frozen_run["head"])
    assert not _changed(alone, frozen_run["head"], backbone + head)
    # The same momentum too; a run without train.phases keeps TF's slot name.
    slots = [name[:-len(HEAD_SLOT)] for name in frozen_run["head"] if name.endswith(HEAD_SLOT)]
    assert all(np.array_equal(alone[f"{name}/Momentum"], frozen_run["head"][name + HEAD_SLOT]) for name in slots)


@pytest.mark.slow
def test_frozen_batch_norm_keeps_the_moving_statistics_while_gamma_and_beta_train(frozen_run):
    backbone, _ = _model_variables(frozen_run["top"])
    statistics = _statistics(backbone)
    assert statistics and not _changed(frozen_run["pretrained"], frozen_run["top"], statistics)
    scales = [name for name in backbone if re.match(TOP_BLOCKS, name) and name.endswith(("/gamma", "/beta"))]
    # Conv2d_2 and Conv2d_3, each a depthwise and a pointwise layer with its own BatchNorm
    assert len(scales) == 2 * 2 * 2 and _changed(frozen_run["head"], frozen_run["top"], scales) == set(scales)
    assert frozen_run["metrics"]["restore"]["frozen_variables_unchanged"] is True


@pytest.mark.slow
def test_batch_norm_train_moves_the_moving_statistics(demo_cache, tiny_data, tmp_path):
    """The counterpart of the frozen test, so that one can fail: in training mode every backbone
    BatchNorm layer below the cut averages in its batch statistics, trained or not."""
    saved = _run(demo_cache, tiny_data, tmp_path, *_phases("train"))
    statistics = _statistics(_model_variables(saved["top"])[0])
    assert not _changed(saved["pretrained"], saved["head"], statistics)  # phase 1 kept the run's default, frozen
    assert _changed(saved["head"], saved["top"], statistics) == set(statistics)
    assert saved["metrics"]["restore"]["frozen_variables_unchanged"] is False


@pytest.mark.slow
def test_a_phase_whose_var_list_selects_nothing_names_its_key(demo_cache, tiny_data, tmp_path):
    with pytest.raises(FinetuneError, match=r"train\.phases\[1\]\.var_list"):
        _run(demo_cache, tiny_data, tmp_path, *_phases("frozen", "['Nothing/']"))
    assert not (tmp_path / "checkpoints").exists()  # refused while the graph is built, before a step


@pytest.mark.parametrize("phases, steps, expected", [
    ("[{name: a, steps: 3}, {name: a, steps: 3}]", 6, "'train.phases[1].name' is 'a'"),
    ("[{name: 'top blocks', steps: 3}]", 3, "'train.phases[0].name' is 'top blocks'"),
    ("[{name: a, steps: 0}, {name: b, steps: 3}]", 3, "'train.phases[0].steps' is 0"),
    ("[{name: a, steps: 3}, {name: b, steps: -1}]", 3, "'train.phases[1].steps' is -1"),
    ("[{name: a, steps: 3}, {name: b, steps: 3}]", 5, "train.phases add up to 6 steps; set train.steps=6"),
    ("[{name: a, steps: 3, var_list: ['(']}]", 3, "'train.phases[0].var_list' holds an invalid regular expression"),
    ("[{name: a, steps: 3, optimizer: adamw}]", 3, "'train.phases[0].optimizer' is 'adamw'"),
    ("[{name: a, steps: 3, decay: linear}]", 3, "'train.phases[0].decay' is 'linear'"),
    ("[{name: a, steps: 3, batch_norm: fixed}]", 3, "'train.phases[0].batch_norm' is 'fixed'"),
    ("[{name: a, steps: 3, learning_rate: -1}]", 3, "'train.phases[0].learning_rate' is -1"),
    ("[{steps: 3}]", 3, "train.phases[0].name must be set"),
])
def test_bad_phases_are_one_paragraph_naming_the_key(phases, steps, expected):
    cfg = compose_config(["experiment=mobilenet_head", f"train.phases={phases}", f"train.steps={steps}"])
    found = problems(cfg)
    assert len(found) == 1 and expected in found[0] and "\n" not in found[0], found
    with pytest.raises(FinetuneError) as raised:
        validate(cfg)
    assert str(raised.value) == found[0]


def test_a_bad_phase_on_the_command_line_exits_2_before_a_run_directory_exists(tmp_path):
    result = cli(["finetune", "experiment=mobilenet_two_phase", "train.phases.1.learning_rate=0",
                  f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "'train.phases[1].learning_rate' is 0" in output and "Traceback" not in output
    assert not (tmp_path / "run").exists()


def test_the_two_phase_experiment_is_the_head_then_the_top_blocks_at_a_hundredth_of_the_rate():
    cfg = compose_config(["experiment=mobilenet_two_phase"])
    head_only = compose_config(["experiment=mobilenet_head"])
    assert not problems(cfg)
    head, top = cfg.train.phases
    assert (head.name, top.name) == ("head", "top_blocks")
    assert head.steps == head_only.train.steps and head.steps + top.steps == cfg.train.steps
    assert list(head.var_list) == ["head/"] and "head/" in top.var_list
    assert top.learning_rate == pytest.approx(cfg.optimizer.learning_rate / 100) and top.batch_norm == "frozen"
