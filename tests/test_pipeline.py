"""End to end: restore, head-only training, evaluation, freezing, resuming, sweeps.

The mechanics (what a run directory holds, the frozen graph, reproducibility, resuming, sweeps) run on the
tiny profile (conftest) or read its shared tiny_run; the demo experiment's own numbers are
tests/test_demo.py's. The command line's bad inputs are in tests/test_bad_inputs.py.
"""
import json
import os

import numpy as np
import pytest
from conftest import cli, compose_config, run_pipeline, tiny_config, tiny_overrides
from omegaconf import OmegaConf

from finetune import demo, graphs, pipeline
from finetune.compat import tf, tf1
from finetune.data import demo_images
from finetune.data.image_folder import scan_image_folder
from finetune.data.images import load_images
from finetune.model.towers import build_export_tower, variables_read_by
from finetune.run_status import lock_record
from finetune.training.training_graph import build_training_graph
from finetune.weights.readers import read_checkpoint
from finetune.weights.restore import apply_restore, build_restore, plan_restore

# What the tiny profile restores: test_mobilenet_v1's 7 layers (Conv2d_0, three depthwise and three pointwise),
# each its weights and 4 BatchNorm variables.
TINY_RESTORED = 35


def test_experiment_backbone_is_the_demo_backbone(tmp_path):
    backbone = compose_config(["experiment=mobilenet_head"]).backbone
    assert backbone.name == demo.DEMO_BACKBONE["name"]
    assert backbone.image_size == demo.DEMO_BACKBONE["image_size"]
    assert dict(backbone.params) == demo.DEMO_BACKBONE["params"]


@pytest.mark.slow
def test_run_directory_holds_everything(tiny_run):
    run_dir, metrics = tiny_run
    for relative in ("export/frozen_graph.pb", "export/labels.txt", "metrics.json", "restore_report.txt",
                     "config.yaml", "checkpoints/checkpoint"):
        assert (run_dir / relative).is_file(), relative
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "export/labels.txt").read_text().split() == sorted(demo_images.TARGET_CLASSES)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val"]["accuracy"] == metrics["val"]["accuracy"]
    assert max(saved["export"]["parity"].values()) < 1e-4
    assert saved["restore"]["verified_bit_identical"] is True
    assert saved["restore"]["frozen_variables_unchanged"] is True
    report = (run_dir / "restore_report.txt").read_text()
    restored = "MobilenetV1/Conv2d_3_pointwise/BatchNorm/moving_mean"
    assert f"{restored} <- {restored}" in report
    # A checkpoint entry the graph does not read (the demo checkpoint's blocks above the cut) is listed unused.
    assert "MobilenetV1/Conv2d_13_pointwise/weights\t[1, 1, 256, 256]" in report
    # The lock, let go, says that nothing runs in the directory any more.
    assert (run_dir / ".lock").read_text().startswith("not running: finished at ")
    assert lock_record(run_dir)[0] == os.getpid()
    # The table's train row says which steps it averages (the tiny profile: train.log_every=1).
    assert saved["train"]["last_steps"] == 1
    assert "\ntrain (last 1 step)  " in pipeline.summary_table(metrics, run_dir)


@pytest.mark.slow
def test_head_only_training_keeps_restored_variables_bit_identical(demo_cache, tiny_data):
    cfg = tiny_config(demo_cache, tiny_data, "data.feature_cache=off")  # the training tower reads images
    data = scan_image_folder(tiny_data, cfg.data)
    checkpoint = demo.checkpoint()
    with tf.Graph().as_default():
        model = build_training_graph(data, cfg.backbone, cfg.head, cfg.data, cfg.optimizer, cfg.train)
        shapes = {name: v.shape.as_list() for name, v in model.model_variables.items()}
        plan = plan_restore(shapes, checkpoint, variables_read_by([model.export.cut]), cfg.restore)
        with tf1.Session() as sess:
            apply_restore(sess, build_restore(plan, model.model_variables))
            sess.run(model.images.train_iterator_initializer)
            before = sess.run(model.model_variables)
            for _ in range(15):
                sess.run(model.phases[0].train_op)
            after = sess.run(model.model_variables)
    assert len(plan.restore) == TINY_RESTORED and all(name.startswith("MobilenetV1/") for name in plan.restore)
    for name in plan.restore:  # weights and BatchNorm moving statistics alike
        assert np.array_equal(before[name], after[name]), name
    assert model.trained and all(name.startswith("head/") for name in model.trained)
    for name in model.trained:
        assert not np.array_equal(before[name], after[name]), name


@pytest.mark.slow
def test_frozen_graph_matches_a_fresh_session_at_any_batch_size(tiny_run, demo_cache, tiny_data):
    run_dir, metrics = tiny_run
    cfg = tiny_config(demo_cache, tiny_data)
    frozen = graphs.load_graph_def(run_dir / "export/frozen_graph.pb")
    assert not any(node.device for node in frozen.node)
    assert not any(node.op in ("VarHandleOp", "VariableV2", "IteratorGetNext") for node in frozen.node)
    data = scan_image_folder(tiny_data, cfg.data)
    images = load_images([example.reference for example in data.examples["val"][:5]], cfg.backbone.image_size)
    assert len(images) == 5
    with tf.Graph().as_default():
        tower = build_export_tower(cfg.backbone, cfg.head, len(data.class_names))
        # Run checkpoints hold the variables the model reads; layers above the cut are not among them.
        read = variables_read_by([tower.probabilities])
        saver = tf1.train.Saver(var_list=[v for v in tf1.global_variables() if v.op.name in read])
        with tf1.Session() as sess:
            saver.restore(sess, str(run_dir / metrics["checkpoint"]))
            expected = sess.run(tower.probabilities, {tower.pixels: images})
    for batch in (images[:1], images):
        (got,) = graphs.run_graph_def(frozen, {"input:0": batch}, ["probabilities:0"])
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-5)


@pytest.mark.slow
def test_runs_are_reproducible_and_seeds_are_repeats(tiny_run, demo_cache, tiny_data, tmp_path):
    """A second run of tiny_run's training gives the same weights, numbers and predictions to the bit, though
    it evaluates only after training (tiny_run evaluates each epoch too: an evaluation draws nothing from
    what training draws); a run with another train.seed (a repeat) gives others. The export, which comes after
    the training and evaluation compared here, is skipped."""
    first_dir, first = tiny_run
    second = run_pipeline(tiny_config(demo_cache, tiny_data, "export.enabled=false"), tmp_path / "again")
    assert first["val"] == second["val"] and first["train"]["loss"] == second["train"]["loss"]
    assert first["test"] == second["test"] and first["steps"] == second["steps"] == 4
    assert len((first_dir / "metrics.jsonl").read_text().splitlines()) > 1  # tiny_run evaluated during training
    assert len((tmp_path / "again/metrics.jsonl").read_text().splitlines()) == 1  # this one after it only
    trained = read_checkpoint(str(first_dir / first["checkpoint"]))
    again = read_checkpoint(str(tmp_path / "again" / second["checkpoint"]))
    assert trained.keys() == again.keys() and all(np.array_equal(trained[n], again[n]) for n in trained)
    assert (first_dir / "predictions.jsonl").read_bytes() == (tmp_path / "again/predictions.jsonl").read_bytes()

    repeat = run_pipeline(tiny_config(demo_cache, tiny_data, "export.enabled=false", "train.seed=2"),
                          tmp_path / "seed2")
    other = read_checkpoint(str(tmp_path / "seed2" / repeat["checkpoint"]))
    assert repeat["train"]["loss"] != first["train"]["loss"]
    # The head starts elsewhere and sees other batches; the frozen backbone is the restored one in both.
    assert not np.array_equal(other["head/dense_3/weights"], trained["head/dense_3/weights"])
    assert all(np.array_equal(other[n], trained[n]) for n in trained if n.startswith("MobilenetV1/Conv2d_0/"))


@pytest.mark.slow
def test_sweep_runs_one_job_per_value(demo_cache, tiny_data, tmp_path):
    """Hydra's multirun, in this process: one job per learning rate, each a whole run with its frozen graph.
    Left out, as not the subject: the SavedModel (the slowest format to write) and the feature cache (a
    second tower to build)."""
    overrides = tiny_overrides(demo_cache, tiny_data, "export.saved_model=false", "data.feature_cache=off",
                               "optimizer.learning_rate=0.1,0.01")
    result = cli(["finetune", "-m", *overrides, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, cache=demo_cache)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    # A job's folder is named after its overrides (hydra.sweep.subdir): data.root's slashes nest it deeper.
    jobs = sorted(p.parent for p in (tmp_path / "sweep").rglob("metrics.json"))
    assert len(jobs) == 2
    assert sorted(OmegaConf.load(job / "config.yaml").optimizer.learning_rate for job in jobs) == [0.01, 0.1]
    assert all((job / "export/frozen_graph.pb").is_file() for job in jobs)


@pytest.mark.slow
def test_a_run_directory_with_a_checkpoint_resumes_and_says_why(demo_cache, tiny_data, tmp_path, caplog):
    first = run_pipeline(tiny_config(demo_cache, tiny_data, "train.steps=2", "export.enabled=false"), tmp_path)
    assert first["checkpoint"].endswith("model.ckpt-2")
    with caplog.at_level("INFO", logger="finetune"):
        second = run_pipeline(tiny_config(demo_cache, tiny_data, "train.steps=4", "export.enabled=false"), tmp_path)
    assert second["checkpoint"].endswith("model.ckpt-4")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Resuming from")]
    assert len(said) == 1 and "model.ckpt-2" in said[0] and "wins over restore.checkpoint" in said[0]
    assert second["timings"]["resumed_from_step"] == 2 and second["restore"]["verified_bit_identical"] is True
    assert (tmp_path / "restore_report.txt").read_text().startswith("Resuming from")
