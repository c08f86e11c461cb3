"""Test-time augmentation (``eval.tta``, issue 20 item 5): each view is what it says, the views' probabilities
are averaged, a single identity view evaluates exactly as the plain pass, and a run reports plain and TTA numbers
side by side (TTA from images also where the plain pass reads cached features) and exports a TTA graph that
passes parity. The image_bytes TTA graph is test_export's bytes_run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli, compose_config, tiny_config, tiny_overrides
from omegaconf import OmegaConf

from finetune import graphs
from finetune.analysis.runs import load_jobs
from finetune.compat import tf, tf1
from finetune.data.image_folder import scan_image_folder
from finetune.data.images import decode_images
from finetune.model import tta
from finetune.training.evaluate import SCALARS, evaluate_all, evaluate_tta, split_metrics
from finetune.training.training_graph import build_training_graph
from finetune.validate import problems
from finetune.vocab import TTA_VIEWS

IMAGE_SIZE = 32  # the tiny profile (conftest.TINY_BACKBONE)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _decoded(root, keys: list[str]) -> np.ndarray:
    return decode_images([(root / key).read_bytes() for key in keys], IMAGE_SIZE, keys)


def test_each_view_is_what_it_says(tiny_data):
    keys = [str(path.relative_to(tiny_data)) for path in sorted(tiny_data.rglob("*.png"))[::16][:4]]
    pixels = _decoded(tiny_data, keys)
    assert not np.array_equal(pixels, pixels[:, :, ::-1]) and not np.array_equal(pixels, pixels[:, ::-1])
    framed = np.zeros_like(pixels[:1])
    framed[:, 8:24, 8:24] = (200.0, 50.0, 10.0)  # the central half of each side
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3])
        views = {name: tta.view(images, name) for name in (*TTA_VIEWS, "center_crop_50")}
        stacked = tta.view_batch(images, ["identity", "flip_left_right", "center_crop_50"])
        with tf1.Session() as sess:
            seen, batch = sess.run([views, stacked], {images: pixels})
            cropped = sess.run(views["center_crop_50"], {images: framed})
    assert np.array_equal(seen["identity"], pixels)
    assert np.array_equal(seen["flip_left_right"], pixels[:, :, ::-1])  # [N, H, W, C]: W reversed
    assert np.array_equal(seen["flip_up_down"], pixels[:, ::-1])
    assert np.array_equal(seen["rotate_180"], np.rot90(pixels, 2, axes=(1, 2)))
    assert cropped.shape == framed.shape and np.allclose(cropped, framed[0, 16, 16], atol=1e-3)  # the square alone
    assert np.array_equal(batch, np.concatenate([pixels, pixels[:, :, ::-1], seen["center_crop_50"]]))  # view by view


def test_combined_views_average_the_probabilities():
    views, images, classes = 3, 4, 5
    logits = (np.random.default_rng(0).normal(size=(views * images, classes)) * 3).astype(np.float32)
    with tf.Graph().as_default():
        one = tf.constant(logits)
        combined, probabilities = tta.combine_views(one, views)
        single = tta.combine_views(one, 1)
        with tf1.Session() as sess:
            combined, probabilities = sess.run([combined, probabilities])
    expected = _softmax(logits).reshape(views, images, classes).mean(axis=0)
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.allclose(_softmax(combined), expected, atol=1e-6)  # logits whose softmax is the mean
    assert single[0] is one  # one view: its own logits, nothing averaged


@pytest.mark.slow
def test_identity_tta_equals_plain_evaluation_and_adds_its_ops_last(demo_cache, tiny_data):
    """The evaluation tower and the TTA tower of [identity], on the same (initialised) weights, find exactly the
    same; and the graph with the TTA tower is the graph without it plus ops made after all of its own."""
    plain_cfg = tiny_config(demo_cache, tiny_data, "data.feature_cache=off")
    cfg = tiny_config(demo_cache, tiny_data, "data.feature_cache=off", "eval.tta=[identity]")
    data = scan_image_folder(tiny_data, cfg.data)
    graph_defs = []
    for config in (plain_cfg, cfg):
        with tf.Graph().as_default() as graph:
            tf1.set_random_seed(0)
            model = build_training_graph(data, config.backbone, config.head, config.data, config.optimizer,
                                         config.train, eval_cfg=config.eval)
            # (each op's name, type and inputs: its attributes may name a tf.data function, numbered per process)
            graph_defs.append([(node.name, node.op, list(node.input)) for node in graph.as_graph_def().node])
    without, with_tta = graph_defs
    assert len(with_tta) > len(without) and with_tta[:len(without)] == without
    assert all(name.startswith("eval_tta/") for name, _, _ in with_tta[len(without):])
    with graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        plain = evaluate_all(sess, ["val", "test"], model, cfg.train.top_k, data, held_out_features=None,
                             batch_size=cfg.data.eval_batch_size)
        augmented = evaluate_tta(sess, ["val", "test"], model, cfg.train.top_k)
    for split in ("val", "test"):
        want, got = plain[split], augmented[split]
        assert want.images > 0 and want.probabilities.std() > 0
        assert got.scalars() == want.scalars()
        assert got.keys == want.keys and np.array_equal(got.labels, want.labels)
        assert np.array_equal(got.probabilities, want.probabilities)
        assert np.array_equal(got.confusion, want.confusion) and got.mistakes == want.mistakes
        assert split_metrics(got, data.class_names) == split_metrics(want, data.class_names)


@pytest.mark.slow
def test_a_tta_run_reports_both_from_images_and_exports_a_checked_graph(demo_cache, tiny_data, tmp_path):
    """A head-only tiny run: the plain pass reads cached features, the TTA pass (flips) images; the TTA numbers
    are the mean of the exported model's probabilities over each image and its mirror image."""
    run_dir = tmp_path / "run"
    result = cli(["finetune", *tiny_overrides(demo_cache, tiny_data, "eval.tta=flips", "export.tta=true",
                                              "export.saved_model=false", "optimized_metric=val.tta.accuracy",
                                              f"hydra.run.dir={run_dir}")], tmp_path, cache=demo_cache)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "val split:" in (run_dir / "finetune.log").read_text()  # the plain pass read the cached features
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        plain, augmented = metrics[split], metrics[split]["tta"]
        assert augmented["views"] == ["identity", "flip_left_right"]
        assert set(SCALARS) <= set(plain) & set(augmented) and augmented["images"] == plain["images"] > 0
        assert list(augmented["per_class"]) == list(plain["per_class"])
    lines = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    val = [line for line in lines if line["split"] == "val"]
    pixels = _decoded(tiny_data, [line["example"] for line in val])
    frozen = graphs.load_graph_def(run_dir / "export/frozen_graph.pb")
    (straight,) = graphs.run_graph_def(frozen, {"input:0": pixels}, ["probabilities:0"])
    (mirrored,) = graphs.run_graph_def(frozen, {"input:0": pixels[:, :, ::-1]}, ["probabilities:0"])
    assert np.allclose([line["probabilities"] for line in val], straight, atol=1e-5)
    assert np.allclose([line["tta_probabilities"] for line in val], (straight + mirrored) / 2, atol=1e-5)
    assert sum(line["tta_predicted"] == line["label"] for line in val) / len(val) == metrics["val"]["tta"]["accuracy"]
    # The exported TTA graph: the same input and outputs, parity-checked against the session's TTA tower.
    meta = json.loads((run_dir / "export/model.json").read_text())
    assert meta["tta"] == {"graph": "tta_graph.pb", "views": ["identity", "flip_left_right"]}
    parity = metrics["export"]["parity"]
    assert {"tta_logits", "tta_probabilities"} <= set(parity) and max(parity.values()) < 1e-4, parity
    (exported,) = graphs.run_graph_def(graphs.load_graph_def(run_dir / "export/tta_graph.pb"), {"input:0": pixels},
                                       ["probabilities:0"])
    assert np.allclose(exported, (straight + mirrored) / 2, atol=1e-5)
    (job,) = load_jobs([run_dir])  # tools summarize addresses them as dotted paths
    assert job.value("val.tta.accuracy") == metrics["val"]["tta"]["accuracy"]
    assert job.value("test.tta.loss") == metrics["test"]["tta"]["loss"]


def test_tta_keys_are_checked_together():
    """export.tta and a val.tta.* optimized_metric need views; a view named twice would count twice."""
    cfg = compose_config(["experiment=mobilenet_head"])

    def found(tta, export_tta: bool = False, metric: str = "val.accuracy") -> str:
        OmegaConf.update(cfg, "eval.tta", tta, merge=False)
        cfg.export.tta, cfg.optimized_metric = export_tta, metric
        return "\n".join(problems(cfg))

    assert found("flips", True, "test.tta.macro_f1") == "" and found(["center_crop_87", "flip_up_down"]) == ""
    assert "export.tta" in found([], True) and "eval.tta is empty" in found([], metric="val.tta.loss")
    assert "names identity more than once" in found(["flips", "identity"])
    for bad in ("center_crop_100", "center_crop_07", "crop_87"):
        assert f"{bad!r} is neither a view nor a preset" in found([bad]), bad
