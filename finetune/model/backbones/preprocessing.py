"""Per-backbone input normalisation, applied inside the graph to float RGB pixels in [0, 255]."""
from __future__ import annotations

from typing import Callable

from finetune.compat import tf

# Per-channel RGB means of ImageNet, as the VGG and ResNet v1 checkpoints expect them.
_IMAGENET_RGB_MEAN = (123.68, 116.78, 103.94)


def inception(pixels: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1] (Inception, MobileNet, ResNet v2)."""
    return tf.subtract(tf.multiply(pixels, 1.0 / 127.5), 1.0, name="to_minus1_1")


def vgg(pixels: tf.Tensor) -> tf.Tensor:
    """Subtract the ImageNet RGB mean (VGG, ResNet v1); channels stay RGB as in TF-Slim."""
    return tf.subtract(pixels, tf.constant(_IMAGENET_RGB_MEAN, dtype=pixels.dtype), name="mean_subtract")


def none(pixels: tf.Tensor) -> tf.Tensor:
    """For imported graphs that normalise their input themselves."""
    return tf.identity(pixels, name="pixels")


PREPROCESSORS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {"inception": inception, "vgg": vgg, "none": none}
