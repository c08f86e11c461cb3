"""``init``: write a starter config folder (an experiment and a head) that joins ours through --config-dir."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.files import write_text_atomically

HELP = "write a starter config folder: DIR/experiment/my_experiment.yaml and DIR/head/my_head.yaml"

EXPERIMENT_NAME = "my_experiment"
HEAD_NAME = "my_head"

# The experiment spells out what experiment=mobilenet_head takes from its files, so that every piece a
# user may want to change is in front of them, with the key's meaning beside it.
EXPERIMENT_YAML = f"""\
# @package _global_
# A starter experiment, written by `python -m finetune.tools init`. Run it with
#   python -m finetune --config-dir DIR experiment={EXPERIMENT_NAME}
# where DIR is the folder holding this experiment/ folder.
# As it stands it is our experiment=mobilenet_head with its head in this folder: the demo MobileNet v1
# (0.25, 96x96, pretrained on other shapes) and the demo image folder, both made once and cached.
# Any key can also be set on the command line (train.steps=100 data.root=/my/images ...); the README's
# configuration table explains each one. Copy this file under another name for another experiment.

defaults:
  # The net to cut: a file of our backbone group (mobilenet_v1, mobilenet_v2, inception_v3,
  # resnet_v1_50, vgg_16, ...) or a backbone/NAME.yaml of your own in this folder.
  - override /backbone: mobilenet_v1
  # The new layers: head/{HEAD_NAME}.yaml in this folder (or ours: pool_dense, conv_pool_dense, keras_recipe).
  - override /head: {HEAD_NAME}
  # sgd, momentum, adam or rmsprop.
  - override /optimizer: momentum

backbone:
  image_size: 96  # square input side in pixels (the demo backbone was trained at 96)
  # Where the head attaches: an end point or a tensor name. List them with
  #   python -m finetune.tools endpoints --config-dir DIR experiment={EXPERIMENT_NAME}
  cut: Conv2d_11_pointwise
  params:
    depth_multiplier: 0.25  # MobileNet width; the demo checkpoint was trained at 0.25

data:
  # Your images: a folder with one subfolder of .jpg/.jpeg/.png files per class. null: the demo dataset.
  root: null
  batch_size: 32
  # Fractions of the images for training, validation and test: a fifth each to evaluate on narrows the
  # intervals when runs are compared (python -m finetune.tools summarize).
  split: {{train: 0.6, val: 0.2, test: 0.2}}

restore:
  # The pretrained weights: a checkpoint prefix (path/model.ckpt), a folder of checkpoints, a frozen
  # .pb, an .npz, zoo:NAME (an official TF-Slim checkpoint, downloaded once), demo, or null (no restore).
  checkpoint: demo
  # Empty include: every backbone variable the cut depends on (BatchNorm statistics included).
  include: []

optimizer:
  learning_rate: 0.01
  # What trains: regexes matched at the start of variable names. head/ = the new layers only;
  # add e.g. MobilenetV1/Conv2d_11_ (and lower the rate) to finetune the top of the backbone too.
  var_list: ["head/"]

train:
  steps: 300
  checkpoint_every: 250  # steps between checkpoints in the run directory

export:
  saved_model: true  # besides export/frozen_graph.pb, also a SavedModel
  tflite: false      # and, when true, a TFLite file
"""

HEAD_YAML = f"""\
# A starter head, written by `python -m finetune.tools init` and used by experiment/{EXPERIMENT_NAME}.yaml.
# The layers run in order on the cut tensor and must end in logits [batch, classes]; a final 1x1 map
# is squeezed. Layer types and their keys are in the README ("Head layers").
scope: head             # the variable scope of the new layers (optimizer.var_list selects it)
weight_decay: 0.0       # L2 on the head's weights
batch_norm_decay: 0.99  # moving-average decay of the head's BatchNorm layers
layers:
  - {{type: conv2d, filters: 64, kernel_size: 3, activation: relu, batch_norm: true}}
  - {{type: global_avg_pool}}  # keeps a 1x1 map
  - {{type: dropout, rate: 0.3}}  # fraction of units dropped while training
  - {{type: dense, units: null}}  # null: one unit per class, read from the data
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "init", help=HELP,
        description=HELP + f". Then `python -m finetune --config-dir DIR experiment={EXPERIMENT_NAME}` runs it; "
                           "the tools that take overrides take --config-dir DIR too.")
    parser.add_argument("directory", metavar="DIR", help="the folder to write (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")
    return parser


def starter_files(config_dir: Path) -> dict[Path, str]:
    """The files ``init`` writes into ``config_dir``, with their text."""
    return {
        config_dir / "experiment" / f"{EXPERIMENT_NAME}.yaml": EXPERIMENT_YAML,
        config_dir / "head" / f"{HEAD_NAME}.yaml": HEAD_YAML,
    }


def run(args: argparse.Namespace) -> int:
    config_dir = Path(args.directory)
    if config_dir.exists() and not config_dir.is_dir():
        raise FinetuneError(f"init {config_dir}: this is a file, not a folder. Name a folder to write the "
                            "starter configs into.")
    files = starter_files(config_dir)
    existing = [str(path) for path in files if path.exists()]
    if existing and not args.force:  # checked before writing anything, so nothing is half-written
        raise FinetuneError(f"init {config_dir}: would overwrite {', '.join(existing)}. Pass --force to "
                            "overwrite, or name another DIR.")
    for path, text in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, text)
        except OSError as error:  # e.g. no permission, or a file where a folder must go
            reason = f"{error.strerror}: {error.filename}" if error.filename else str(error)
            raise FinetuneError(f"init {config_dir}: cannot write {path} ({reason}). "
                                "Name a folder you can write to.") from None
        print(f"wrote {path}")
    command = f"python -m finetune --config-dir {shlex.quote(str(config_dir))} experiment={EXPERIMENT_NAME}"
    print(f"Run it with:\n  {command}")
    return 0
