"""Write ``tests/data/<net>.variables.tsv`` for the nets that ``tf_slim.nets`` ships.

Each net is built straight from TF-Slim's published definition (not through this project's
registry), under its own arg scope, with the class count of its model-zoo checkpoint, so the
tables describe what those checkpoints hold: 1001 classes (background + 1000) for Inception and
ResNet v2, 1000 for VGG and ResNet v1; Inception v3 with its auxiliary head, as in
``inception_v3.ckpt``. One row per variable: name, shape, dtype (tab-separated), sorted by name.

Usage: python scripts/make_variable_tables.py [--out tests/data] [NET ...]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from finetune.compat import slim, tf, tf1

from tf_slim.nets import inception_v1, inception_v2, inception_v3, resnet_utils, resnet_v1, resnet_v2, vgg

log = logging.getLogger(__name__)

# name -> (net function, arg scope, image size, zoo classes, extra arguments)
NETS: dict[str, tuple[Callable, Callable, int, int, dict[str, Any]]] = {
    "inception_v1": (inception_v1.inception_v1, inception_v1.inception_v1_arg_scope, 224, 1001, {}),
    "inception_v2": (inception_v2.inception_v2, inception_v2.inception_v2_arg_scope, 224, 1001, {}),
    "inception_v3": (inception_v3.inception_v3, inception_v3.inception_v3_arg_scope, 299, 1001,
                     {"create_aux_logits": True}),
    **{f"resnet_v1_{n}": (getattr(resnet_v1, f"resnet_v1_{n}"), resnet_utils.resnet_arg_scope, 224, 1000, {})
       for n in (50, 101, 152)},
    **{f"resnet_v2_{n}": (getattr(resnet_v2, f"resnet_v2_{n}"), resnet_utils.resnet_arg_scope, 224, 1001, {})
       for n in (50, 101, 152)},
    "vgg_16": (vgg.vgg_16, vgg.vgg_arg_scope, 224, 1000, {}),
    "vgg_19": (vgg.vgg_19, vgg.vgg_arg_scope, 224, 1000, {}),
}


def variable_rows(name: str) -> list[str]:
    """``name<TAB>[shape]<TAB>dtype`` for every variable of TF-Slim's ``name``, sorted by name."""
    net_fn, arg_scope_fn, size, classes, extra = NETS[name]
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, [None, size, size, 3])
        with slim.arg_scope(arg_scope_fn()):
            net_fn(images, num_classes=classes, is_training=False, **extra)
        rows = [
            f"{v.op.name}\t{v.shape.as_list()}\t{v.dtype.base_dtype.name}" for v in tf1.global_variables()
        ]
    return sorted(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", default=sorted(NETS), help="nets to write (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.nets:
        rows = variable_rows(name)
        path = args.out / f"{name}.variables.tsv"
        path.write_text("".join(row + "\n" for row in rows))
        log.info("%s: %d variables -> %s", name, len(rows), path)


if __name__ == "__main__":
    main()
