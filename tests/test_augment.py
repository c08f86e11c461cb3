"""data.augment: each type, its seeding and its defaults, run as the pipeline runs it (tf.data map, tf1 Session)."""
import dataclasses
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from finetune.compat import tf, tf1
from finetune.config import AugmentConfig, Config
from finetune.data.augment import DEFAULTS, augment_image, entry_params, rotate
from finetune.vocab import AUGMENT_TYPES

SIZE = 24
POSITIONS = 8
# Colourful noise over a gradient: no symmetry, so every flip, crop and rotation shows.
IMAGE = np.clip(np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE, 3))
                + np.linspace(-60, 60, SIZE)[:, None, None], 0, 255).astype(np.float32)


def augmented(entries, train_seed=7, positions=POSITIONS, image=IMAGE):
    """The augmented image at each of ``positions`` training positions, through a tf.data map in a Session."""
    with tf.Graph().as_default():
        seed = tf.constant(train_seed, tf.int64)
        dataset = tf.data.Dataset.range(positions).map(
            lambda position: augment_image(tf.constant(image), entries, tf.stack([seed, position])),
            num_parallel_calls=2)
        batch = tf1.data.make_one_shot_iterator(dataset.batch(positions)).get_next()
        with tf1.Session() as sess:
            return sess.run(batch)


@pytest.mark.parametrize("kind", AUGMENT_TYPES)
def test_every_type_changes_the_image_and_keeps_shape_dtype_and_range(kind):
    out = augmented([AugmentConfig(type=kind)])
    assert out.shape == (POSITIONS, SIZE, SIZE, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = [np.abs(image - IMAGE).mean() > 0.5 for image in out]
    assert any(changed), f"{kind} left every image as it was"
    if kind not in ("flip_left_right", "flip_up_down"):  # a flip is a coin toss; the others always move pixels
        assert all(changed)


def test_the_same_seed_gives_the_same_images_and_other_positions_or_seeds_other_images():
    entries = [AugmentConfig(type=kind) for kind in AUGMENT_TYPES]
    first, again = augmented(entries), augmented(entries)
    np.testing.assert_array_equal(first, again)  # a new graph and session: nothing carried over
    flat = first.reshape(POSITIONS, -1)
    assert all(not np.array_equal(flat[i], flat[j]) for i in range(POSITIONS) for j in range(i))
    assert not np.array_equal(first, augmented(entries, train_seed=8))


@pytest.mark.parametrize("kind, flip", [("flip_left_right", np.fliplr), ("flip_up_down", np.flipud)])
def test_flip_probabilities_zero_and_one_are_exact(kind, flip):
    never = augmented([AugmentConfig(type=kind, probability=0.0)])
    always = augmented([AugmentConfig(type=kind, probability=1.0)])
    for image in never:
        np.testing.assert_array_equal(image, IMAGE)
    for image in always:
        np.testing.assert_array_equal(image, flip(IMAGE))


def test_an_empty_list_returns_the_image_unchanged():
    with tf.Graph().as_default():
        image = tf.constant(IMAGE)
        assert augment_image(image, [], tf.constant([7, 0], tf.int64)) is image
    np.testing.assert_array_equal(augmented([]), np.broadcast_to(IMAGE, (POSITIONS, SIZE, SIZE, 3)))


def test_adding_an_entry_leaves_the_draws_of_the_entries_before_it_alone():
    rotated = augmented([AugmentConfig(type="random_rotation")])
    assert len({float(np.abs(image - IMAGE).mean()) for image in rotated}) == POSITIONS  # one angle per position
    then_flipped = augmented([AugmentConfig(type="random_rotation"),
                              AugmentConfig(type="flip_up_down", probability=1.0)])
    np.testing.assert_array_equal(then_flipped, rotated[:, ::-1])


def test_null_keys_take_the_defaults_and_set_keys_are_read_from_omegaconf_nodes():
    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"data": {"augment": [
        {"type": "random_crop", "area": [1.0, 1.0], "aspect_ratio": [1.0, 1.0]},
        {"type": "random_rotation", "max_degrees": 0},
        {"type": "hue"}, {"type": "brightness"}]}})
    crop, rotation, hue, brightness = cfg.data.augment
    assert entry_params(crop) == {"area": [1.0, 1.0], "aspect_ratio": [1.0, 1.0]}
    assert entry_params(hue) == {"max_delta": 0.05} and entry_params(brightness) == {"max_delta": 32.0}
    # The whole image, not turned: the set values reached the ops.
    np.testing.assert_allclose(augmented([crop, rotation]), np.broadcast_to(IMAGE, (POSITIONS, SIZE, SIZE, 3)),
                               atol=1e-3)
    fields = {field.name for field in dataclasses.fields(AugmentConfig)}
    assert set(DEFAULTS) == set(AUGMENT_TYPES) and all(set(keys) <= fields for keys in DEFAULTS.values())


def test_rotate_turns_about_the_centre_like_rot90():
    with tf.Graph().as_default(), tf1.Session() as sess:
        quarter = sess.run(rotate(tf.constant(IMAGE), tf.constant(math.pi / 2)))
    np.testing.assert_allclose(quarter, np.rot90(IMAGE, 1), atol=1e-2)
