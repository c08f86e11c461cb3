"""The input pipeline: augmentation reaches training inputs only, and neither the in-memory cache nor a
resume's skip changes the training sequence."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config
from finetune.compat import tf, tf1
from finetune.data.datasets import evaluation_dataset, training_dataset
from finetune.data.examples import Example, LabelledImages

SIZE = 16


def _data(folder: Path) -> LabelledImages:
    rng = np.random.default_rng(0)
    examples = {"train": [], "val": [], "test": []}
    for index in range(12):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(path)
        split = "train" if index < 8 else "val"
        examples[split].append(Example(path.name, index % 2, str(path), path.stat().st_size))
    return LabelledImages("image_folder", folder, ["a", "b"], examples)


def _batches(data: LabelledImages, overrides: list[str], skips: tuple[int, ...] = (0,), count: int = 4,
             val: bool = False) -> dict:
    """``{skip: the first count training batches after skipping skip batches}`` for each of ``skips``, in order,
    from one training dataset whose iterator is started again per skip, the skip fed as the pipeline feeds a
    phase's (the first start sees the dataset fresh, as a resumed run does); with ``val``, also
    ``{"val": the first validation batch}``. One dataset per config: building one traces its map functions."""
    data_cfg = compose_config(["data.batch_size=4", "data.eval_batch_size=4", *overrides]).data
    with tf.Graph().as_default():
        skip_batches = tf1.placeholder(tf.int64, [], name="skip_batches")
        train = tf1.data.make_initializable_iterator(training_dataset(data, SIZE, data_cfg, seed=3,
                                                                      skip_batches=skip_batches))
        train_next = train.get_next()
        if val:
            val_next = tf1.data.make_one_shot_iterator(evaluation_dataset(data, "val", SIZE, data_cfg)).get_next()
        batches = {}
        with tf1.Session() as sess:
            for skip in skips:
                sess.run(train.initializer, {skip_batches: skip})
                batches[skip] = np.stack([sess.run(train_next)[0] for _ in range(count)])
            if val:
                batches["val"] = sess.run(val_next)[0]
    return batches


@pytest.mark.slow
def test_augmentation_changes_training_inputs_and_never_held_out_ones(tmp_path):
    data = _data(tmp_path)
    plain = _batches(data, [], val=True)
    augmented = _batches(data, ["data.augment=[{type: brightness}, {type: random_rotation}]"], val=True)
    assert not np.allclose(plain[0], augmented[0])
    assert np.array_equal(plain["val"], augmented["val"])


@pytest.mark.slow
def test_the_memory_cache_and_a_resume_skip_leave_the_training_sequence_as_it_was(tmp_path):
    data = _data(tmp_path)
    for augment in ([], ["data.augment=[{type: flip_left_right}]"]):
        streamed = _batches(data, ["data.cache_memory_mb=0", *augment])[0]
        cached = _batches(data, ["data.cache_memory_mb=64", *augment], skips=(3, 0))
        assert np.array_equal(cached[3][0], streamed[3])  # a resume after 3 batches goes on with the 4th
        assert np.array_equal(streamed, cached[0])  # 4 batches: two epochs, reshuffled
