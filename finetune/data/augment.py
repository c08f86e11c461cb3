"""Training-image augmentation: the ``data.augment`` list applied in order, with stateless, seeded draws.

:func:`augment_image` takes one decoded, resized training image (float32 [S, S, 3] in [0, 255]) and a
stateless seed ``[train.seed, position in the training sequence]``. Entry ``i`` draws only from its own
seed, folded in from (seed, i), so adding an entry leaves the draws of the entries before it alone, and
only stateless random ops are used: the same seed gives the same pixels in any process, which exact
resume relies on. Every op here builds in graph mode, inside a ``tf.data`` map.

A key left null in an entry takes the type's default from :data:`DEFAULTS`; the keys a type reads are
exactly those of its defaults. The valid type names live in :data:`finetune.vocab.AUGMENT_TYPES`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from finetune.compat import tf
from finetune.vocab import AUGMENT_TYPES, implementations

PIXEL_MAX = 255.0
RNG_ALG = "philox"  # pinned, so a derived seed does not depend on the device that derives it

# type -> the keys it reads and their defaults (a null key in the config means this value)
DEFAULTS: dict[str, dict[str, Any]] = {
    "random_crop": {"area": [0.08, 1.0], "aspect_ratio": [0.75, 4 / 3]},
    "flip_left_right": {"probability": 0.5},
    "flip_up_down": {"probability": 0.5},
    "brightness": {"max_delta": 32.0},  # pixel values of [0, 255]
    "contrast": {"lower": 0.8, "upper": 1.25},
    "saturation": {"lower": 0.8, "upper": 1.25},
    "hue": {"max_delta": 0.05},  # a fraction of the colour circle
    "random_rotation": {"max_degrees": 15.0},
}


def _uniform(seed: tf.Tensor, low: float | tf.Tensor = 0.0, high: float | tf.Tensor = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high, dtype=tf.float32, alg=RNG_ALG)


def random_crop(image: tf.Tensor, seed: tf.Tensor, area: Sequence[float],
                aspect_ratio: Sequence[float]) -> tf.Tensor:
    """A box of random area fraction and width/height ratio, resized back to the image's size."""
    size = tf.shape(image)
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        size, whole, seed=seed, min_object_covered=0.0, aspect_ratio_range=list(aspect_ratio),
        area_range=list(area), max_attempts=100, use_image_if_no_bounding_boxes=True)  # no box found: the whole image
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, size[:2], method="bilinear")


def _flip(flip: Callable[[tf.Tensor], tf.Tensor]) -> Callable[..., tf.Tensor]:
    def apply(image: tf.Tensor, seed: tf.Tensor, probability: float) -> tf.Tensor:
        # u in [0, 1): probability 0 never flips, 1 always does
        return tf.cond(_uniform(seed) < probability, lambda: flip(image), lambda: image)
    return apply


def brightness(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
    return tf.image.stateless_random_brightness(image, max_delta, seed)


def contrast(image: tf.Tensor, seed: tf.Tensor, lower: float, upper: float) -> tf.Tensor:
    return tf.image.stateless_random_contrast(image, lower, upper, seed)  # scale-free: works in [0, 255]


def saturation(image: tf.Tensor, seed: tf.Tensor, lower: float, upper: float) -> tf.Tensor:
    # The HSV conversion expects RGB in [0, 1].
    return tf.image.stateless_random_saturation(image / PIXEL_MAX, lower, upper, seed) * PIXEL_MAX


def hue(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
    return tf.image.stateless_random_hue(image / PIXEL_MAX, max_delta, seed) * PIXEL_MAX


def random_rotation(image: tf.Tensor, seed: tf.Tensor, max_degrees: float) -> tf.Tensor:
    """A uniform angle in [-max_degrees, max_degrees] about the centre; see :func:`rotate`."""
    return rotate(image, _uniform(seed, -max_degrees, max_degrees) * (math.pi / 180.0))


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """``image`` [H, W, C] turned ``angle`` radians (positive: anticlockwise as displayed, like np.rot90)
    about its centre, at the same size; bilinear, the corners filled by reflecting the image."""
    size = tf.shape(image)
    height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The transform maps each output pixel (x, y) to the input position it reads.
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=size[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    return rotated[0]


AUGMENTATIONS = implementations(AUGMENT_TYPES, {
    "random_crop": random_crop,
    "flip_left_right": _flip(tf.image.flip_left_right),
    "flip_up_down": _flip(tf.image.flip_up_down),
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "hue": hue,
    "random_rotation": random_rotation,
}, "data.augment.type")


def entry_params(entry: Any) -> dict[str, Any]:
    """The keys the entry's type reads, each the entry's value or, where null, the type's default."""
    params = {}
    for key, default in DEFAULTS[entry.type].items():
        value = getattr(entry, key, None)
        if value is None:
            params[key] = default
        elif isinstance(default, list):
            params[key] = [float(v) for v in value]  # an OmegaConf ListConfig -> plain floats
        else:
            params[key] = float(value)
    return params


def entry_seed(seed: tf.Tensor, index: int) -> tf.Tensor:
    """The seed of entry ``index``: a function of (seed, index) only, not of the other entries."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.random.experimental.stateless_fold_in(seed, tf.constant(index, tf.int64), alg=RNG_ALG)


def augment_image(image: tf.Tensor, entries: Sequence[Any], seed: tf.Tensor) -> tf.Tensor:
    """Apply the ``data.augment`` entries in order to one float32 [S, S, 3] image in [0, 255].

    ``entries``: AugmentConfig objects or OmegaConf nodes; ``seed``: an int64 [2] stateless seed,
    ``[train.seed, position in the training sequence]``. Returns float32 [S, S, 3] in [0, 255]; with no
    entries, ``image`` itself."""
    if not entries:
        return image
    shape = image.shape
    with tf.name_scope("augment"):
        for index, entry in enumerate(entries):
            image = AUGMENTATIONS[entry.type](image, entry_seed(seed, index), **entry_params(entry))
            # Clipped after each step: the next one (hue, saturation) expects a valid image.
            image = tf.clip_by_value(image, 0.0, PIXEL_MAX)
    image.set_shape(shape)
    return image
