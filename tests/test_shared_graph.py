"""Seeds fed, not built in (finetune.seeding), and the graph and session the jobs of a repeated cross-validation
share (finetune.training.shared_graph): a job on the previous job's graph computes what it computes alone."""
from __future__ import annotations

import numpy as np
from conftest import run_pipeline, tiny_config

from finetune import seeding
from finetune.compat import slim, tf, tf1
from finetune.data.datasets import training_order
from finetune.sweeps import launchers
from finetune.training import shared_graph
from finetune.weights.readers import read_checkpoint


def _initial_values(seed: int, ops_before: int) -> dict[str, np.ndarray]:
    """A conv and a dense layer made under the seeded getter after ``ops_before`` unrelated ops, initialised
    with ``seed`` fed."""
    with tf.Graph().as_default() as graph:
        tf1.set_random_seed(5)
        for index in range(ops_before):
            tf.constant(index)
        with tf1.variable_scope(tf1.get_variable_scope(), custom_getter=seeding.seeded_getter):
            net = slim.conv2d(tf1.placeholder(tf.float32, [None, 4, 4, 3]), 5, 3, scope="conv",
                              weights_initializer=tf1.glorot_uniform_initializer())
            slim.fully_connected(slim.flatten(net), 2, scope="dense",
                                 weights_initializer=tf1.truncated_normal_initializer(stddev=0.1))
        initialize = tf1.global_variables_initializer()
        assert seeding.random_ops_without_seed([initialize]) == []  # every draw reads the fed seed
        with tf1.Session(graph=graph) as sess:
            sess.run(initialize, {seeding.seed_feed(): seed})
            return {v.op.name: sess.run(v) for v in tf1.global_variables()}


def test_initial_values_depend_on_the_seed_and_the_name_not_on_the_ops_made_before():
    first, shifted, other = _initial_values(1, 0), _initial_values(1, 7), _initial_values(2, 0)
    assert first.keys() == shifted.keys() and all(np.array_equal(first[n], shifted[n]) for n in first)
    assert first["train_seed"] == 1 and other["train_seed"] == 2
    for name in ("conv/weights", "dense/weights"):
        assert not np.array_equal(first[name], other[name])
    assert not np.array_equal(first["conv/weights"].ravel()[:10], first["dense/weights"].ravel()[:10])
    limit = np.sqrt(6 / (3 * 3 * 3 + 3 * 3 * 5))  # Glorot-uniform's bound: the distribution is kept
    assert np.abs(first["conv/weights"]).max() <= limit and np.abs(first["conv/weights"]).max() > limit / 2
    assert np.abs(first["dense/weights"]).max() <= 0.2  # truncated at two standard deviations


def test_an_unknown_random_initializer_keeps_its_own_draw_and_is_found():
    with tf.Graph().as_default():
        with tf1.variable_scope(tf1.get_variable_scope(), custom_getter=seeding.seeded_getter):
            tf1.get_variable("orthogonal", [3, 3], initializer=tf1.orthogonal_initializer())
        found = seeding.random_ops_without_seed([tf1.global_variables_initializer()])
    assert found and all(name.startswith("orthogonal/") for name in found)


def test_the_fed_seed_orders_the_data_and_one_pipeline_serves_every_seed_and_size():
    """A shuffle keyed by the seed tensor alone: fed 3, it draws as the number 3 does, whatever the graph's
    seed; one graph gives each seed's order and each split size's."""
    def order(seed, size, graph_seed):
        with tf.Graph().as_default():
            tf1.set_random_seed(graph_seed)
            cfg = type("Data", (), {"sampling": "natural", "shuffle_buffer": None, "batch_size": 1})()
            values = tf1.placeholder(tf.int64, [None])
            fed = tf1.placeholder(tf.int64, [])
            dataset = training_order(tf.data.Dataset.from_tensor_slices((values, values)), [], cfg, fed, 0,
                                     size=tf.size(values, out_type=tf.int64))
            iterator = tf1.data.make_initializable_iterator(dataset.take(size))
            item = iterator.get_next()[1][0]
            with tf1.Session() as sess:
                sess.run(iterator.initializer, {values: np.arange(size), fed: seed})
                return [int(sess.run(item)) for _ in range(size)]
    assert order(3, 12, graph_seed=1) == order(3, 12, graph_seed=99)
    assert order(3, 12, graph_seed=1) != order(4, 12, graph_seed=1)
    assert sorted(order(3, 9, graph_seed=1)) == list(range(9))


def test_jobs_on_one_graph_compute_what_each_computes_alone(demo_cache, tiny_data, tmp_path, caplog):
    """Three jobs of a repeated cross-validation in one process: the second and third train on the first one's
    graph and session, and each gives, to the bit, the weights and predictions of the same job run alone."""
    def job(seed: int, fold: int, name: str) -> tuple[dict, dict]:
        cfg = tiny_config(demo_cache, tiny_data, "export.enabled=false", "data.folds=3", f"data.fold={fold}",
                          f"train.seed={seed}")
        metrics = run_pipeline(cfg, tmp_path / name)
        return metrics, read_checkpoint(str(tmp_path / name / metrics["checkpoint"]))

    with caplog.at_level("INFO", logger="finetune"):
        first = job(1, 0, "a")
        shared = [job(2, 1, "b"), job(1, 0, "a-again")]
    assert caplog.text.count("Training on the graph and session of the previous job") == 2
    shared_graph.release()
    alone = job(2, 1, "b-alone")
    for (metrics, weights), (expected_metrics, expected) in ((shared[0], alone), (shared[1], first)):
        assert metrics["val"] == expected_metrics["val"] and metrics["test"] == expected_metrics["test"]
        assert weights.keys() == expected.keys() and all(np.array_equal(weights[n], expected[n]) for n in weights)
    assert (tmp_path / "b/predictions.jsonl").read_bytes() == (tmp_path / "b-alone/predictions.jsonl").read_bytes()
    assert not np.array_equal(shared[0][1]["head/dense_3/weights"], first[1]["head/dense_3/weights"])
    assert shared[0][1]["train_seed"] == 2 and first[1]["train_seed"] == 1
    # Each job's checkpoints are its own: the shared Saver deletes none of another job's.
    for name in ("a", "b", "a-again"):
        assert (tmp_path / name / f"{first[0]['checkpoint']}.index").is_file()


def test_a_run_on_images_holds_no_graph_for_the_next_job(demo_cache, tiny_data, tmp_path):
    """Image towers read the split's files from pipelines built into the graph: never shared."""
    cfg = tiny_config(demo_cache, tiny_data, "export.enabled=false", "data.feature_cache=off", "train.steps=1")
    run_pipeline(cfg, tmp_path / "run")
    assert shared_graph._held is None


def test_a_job_is_composed_once_and_each_caller_gets_its_own_copy():
    from omegaconf import OmegaConf

    calls = []

    class Loader:
        def load_sweep_config(self, master, overrides):
            calls.append(list(overrides))
            return OmegaConf.create({"job": list(overrides), "n": len(calls)})

    loader, master = Loader(), OmegaConf.create({"sweep": 1})
    launchers.compose_once(loader)
    launchers.compose_once(loader)  # a second launcher's setup wraps nothing twice
    one = loader.load_sweep_config(master, ["a=1"])
    one.n = 99
    again = loader.load_sweep_config(master, ["a=1"])
    other = loader.load_sweep_config(OmegaConf.create({"sweep": 2}), ["a=1"])  # another sweep: composed anew
    assert calls == [["a=1"], ["a=1"]] and again.n == 1 and other.n == 2
