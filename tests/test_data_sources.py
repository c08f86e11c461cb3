"""The data sources: TF-Slim TFRecord shards and CSV files (made here with plain TensorFlow and PIL, not
through the project), and the bad-file scan of an image folder."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE, cli, compose_config, run_pipeline
from PIL import Image

from finetune.compat import tf, tf1
from finetune.data.csv import scan_csv
from finetune.data.examples import SPLITS
from finetune.data.image_folder import scan_image_folder
from finetune.data.datasets import evaluation_dataset
from finetune.data.images import decode_images
from finetune.data.sources import open_source
from finetune.resolve import data_root
from finetune.data.tfrecord import scan_tfrecords
from finetune.pipeline import load_data
from finetune.errors import FinetuneError

CLASSES = {0: "circle", 1: "square", 2: "stripes"}
SIZE = 32


def image_bytes(label: int, seed: int, fmt: str = "JPEG") -> bytes:
    """A small image whose colour says its class, with some noise."""
    rng = np.random.default_rng(seed)
    base = np.zeros((SIZE, SIZE, 3), np.uint8)
    base[..., label] = 200
    pixels = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def slim_example(encoded: bytes, label: int, fmt: bytes = b"jpeg") -> bytes:
    """One record as TF-Slim's converters write it (dataset_utils.image_to_tfexample)."""
    def feature(**kind) -> tf.train.Feature:
        return tf.train.Feature(**kind)

    features = {
        "image/encoded": feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/format": feature(bytes_list=tf.train.BytesList(value=[fmt])),
        "image/class/label": feature(int64_list=tf.train.Int64List(value=[label])),
        "image/height": feature(int64_list=tf.train.Int64List(value=[SIZE])),
        "image/width": feature(int64_list=tf.train.Int64List(value=[SIZE])),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_shard(path: Path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def make_slim_set(root: Path, train_per_class: int = 6, val_per_class: int = 3) -> Path:
    """Two training shards (one holding a record whose JPEG is cut short), one validation shard, no test
    split, labels.txt: what download_and_convert_flowers leaves, in small."""
    root.mkdir(parents=True, exist_ok=True)
    train = [slim_example(image_bytes(label, 100 * label + i, "PNG" if i % 3 == 0 else "JPEG"), label,
                          b"png" if i % 3 == 0 else b"jpeg")
             for i in range(train_per_class) for label in CLASSES]
    cut = image_bytes(1, 999)
    train.insert(4, slim_example(cut[:len(cut) // 2], 1))  # shard 0, record 4
    half = len(train) // 2
    write_shard(root / "shapes_train_00000-of-00002.tfrecord", train[:half])
    write_shard(root / "shapes_train_00001-of-00002.tfrecord", train[half:])
    write_shard(root / "shapes_validation_00000-of-00001.tfrecord",
                [slim_example(image_bytes(label, 5000 + 10 * label + i), label)
                 for i in range(val_per_class) for label in CLASSES])
    (root / "labels.txt").write_text("".join(f"{i}:{name}\n" for i, name in CLASSES.items()))
    return root


def data_cfg(*overrides: str):
    return compose_config(["data.root=/unused", *overrides]).data


# ---------------------------------------------------------------- tfrecord


def test_a_slim_tfrecord_set_is_scanned_with_the_bad_record_listed(tmp_path):
    root = make_slim_set(tmp_path / "slim")
    data = scan_tfrecords(root, data_cfg("data=tfrecord", "data.max_bad_fraction=0.5"))
    assert data.name == "tfrecord" and data.class_names == ["circle", "square", "stripes"]
    assert [len(data.examples[s]) for s in ("train", "val", "test")] == [18, 9, 0]
    assert data.examples["train"][0].key == "shapes_train_00000-of-00002.tfrecord:0"
    assert [e.label for e in data.examples["val"]] == [0, 1, 2] * 3
    report = data.bad_files_report()
    assert report["scanned"] == {"train": 19, "val": 9, "test": 0}
    assert report["skipped"] == {"train": 1, "val": 0, "test": 0}
    [bad] = report["files"]
    assert bad["file"] == "shapes_train_00000-of-00002.tfrecord:4" and bad["split"] == "train"
    assert bad["reason"].startswith("image/encoded: truncated")
    # The default max_bad_fraction (0.01) does not allow one bad record of 19.
    with pytest.raises(FinetuneError, match="(?s)too many files.*shapes_train_00000-of-00002.tfrecord:4"):
        scan_tfrecords(root, data_cfg("data=tfrecord"))


def test_tfrecord_references_read_the_good_records_in_the_graph_and_in_python(tmp_path):
    root = make_slim_set(tmp_path / "slim")
    data = scan_tfrecords(root, data_cfg("data=tfrecord", "data.max_bad_fraction=0.5"))
    examples = data.examples["train"]
    in_python = list(data.reader.read_bytes(examples))
    assert len(in_python) == len(examples) and all(Image.open(io.BytesIO(b)).size == (SIZE, SIZE) for b in in_python)
    with tf.Graph().as_default():
        dataset = data.reader.references(examples).map(data.reader.read)
        element = tf1.data.make_one_shot_iterator(dataset).get_next()
        with tf1.Session() as sess:
            in_graph = []
            with pytest.raises(tf.errors.OutOfRangeError):
                while True:
                    in_graph.append(sess.run(element))
    assert in_graph == in_python
    # A part of a split (as export parity asks for) reads just that part; out of order is refused.
    assert list(data.reader.read_bytes(examples[5:8])) == in_python[5:8]
    with pytest.raises(ValueError):
        list(data.reader.read_bytes([examples[2], examples[1]]))


@pytest.mark.slow  # builds the evaluation pipeline (its map function is traced) and reads a split
def test_the_evaluation_pipeline_reads_tfrecord_labels_in_order(tmp_path):
    root = make_slim_set(tmp_path / "slim")
    cfg = data_cfg("data=tfrecord", f"data.root={root}", "data.eval_batch_size=4", "data.num_parallel_calls=2",
                   "data.max_bad_fraction=0.5")
    data = open_source(cfg, root)
    with tf.Graph().as_default():
        batch = tf1.data.make_one_shot_iterator(evaluation_dataset(data, "val", 24, cfg)).get_next()
        labels, keys = [], []
        with tf1.Session() as sess:
            with pytest.raises(tf.errors.OutOfRangeError):
                while True:
                    pixels, label, key = sess.run(batch)
                    assert pixels.shape[1:] == (24, 24, 3)
                    # The class is the bright channel (image_bytes): the pixels belong to the label.
                    assert list(pixels.mean(axis=(1, 2)).argmax(axis=1)) == list(label)
                    labels += list(label)
                    keys += [k.decode() for k in key]
    assert labels == [e.label for e in data.examples["val"]]
    assert keys == [e.key for e in data.examples["val"]]


def test_label_ids_need_not_start_at_zero_and_map_to_indices_in_id_order(tmp_path):
    root = tmp_path / "ids"
    root.mkdir()
    write_shard(root / "x_train_00000-of-00001.tfrecord",
                [slim_example(image_bytes(i % 2, i), [3, 7][i % 2]) for i in range(4)])
    write_shard(root / "x_validation_00000-of-00001.tfrecord", [slim_example(image_bytes(0, 50), 7)])
    (root / "labels.txt").write_text("7:zebra\n3:ant\n")
    data = scan_tfrecords(root, data_cfg("data=tfrecord"))
    assert data.class_names == ["ant", "zebra"]
    assert [e.label for e in data.examples["train"]] == [0, 1, 0, 1]
    assert [e.label for e in data.examples["val"]] == [1]


def test_a_labels_file_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors (Notepad) start a UTF-8 file with a byte-order mark; it was read into the first ID and
    refused the file (issue 18). Saved so, labels.txt gives the same classes as without it."""
    root = make_slim_set(tmp_path / "slim")
    plain = scan_tfrecords(root, data_cfg("data=tfrecord", "data.max_bad_fraction=0.5"))
    (root / "labels.txt").write_bytes("".join(f"{i}:{name}\r\n" for i, name in CLASSES.items()).encode("utf-8-sig"))
    assert (root / "labels.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    data = scan_tfrecords(root, data_cfg("data=tfrecord", "data.max_bad_fraction=0.5"))
    assert data.class_names == plain.class_names == ["circle", "square", "stripes"]
    assert [e.label for e in data.examples["val"]] == [e.label for e in plain.examples["val"]]


def test_records_that_cannot_be_trained_on_are_bad_examples(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    no_image = tf.train.Example(features=tf.train.Features(feature={
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))})).SerializeToString()
    write_shard(root / "odd_train.tfrecord", [slim_example(image_bytes(0, 1), 0), slim_example(image_bytes(1, 2), 9),
                                              no_image, b"not a protobuf \xff\xff", slim_example(b"hello", 1)])
    write_shard(root / "odd_validation.tfrecord", [slim_example(image_bytes(1, 3), 1)])
    (root / "labels.txt").write_text("0:a\n1:b\n")
    data = scan_tfrecords(root, data_cfg("data=tfrecord", "data.max_bad_fraction=0.9"))
    reasons = {b.key: b.reason for b in data.bad}
    assert [e.key for e in data.examples["train"]] == ["odd_train.tfrecord:0"]
    assert "label 9 is not an ID in labels.txt" in reasons["odd_train.tfrecord:1"]
    assert "image/encoded holds 0" in reasons["odd_train.tfrecord:2"]
    assert "not a tf.train.Example" in reasons["odd_train.tfrecord:3"]
    assert "not an image" in reasons["odd_train.tfrecord:4"]


@pytest.mark.parametrize("case", ["no_labels", "no_train", "corrupt", "missing_shard", "two_prefixes",
                                  "bad_labels_line"])
def test_a_tfrecord_set_that_cannot_be_read_is_one_message_naming_the_file(tmp_path, case):
    root = make_slim_set(tmp_path / "slim")
    first = root / "shapes_train_00000-of-00002.tfrecord"
    expected = {"no_labels": "labels.txt, which does not exist", "no_train": "no shard of the training split",
                "corrupt": f"{first} is not a readable TFRecord file", "missing_shard": "do not form one complete set",
                "two_prefixes": "data.record_prefix", "bad_labels_line": "labels.txt line 2"}[case]
    if case == "no_labels":
        (root / "labels.txt").unlink()
    elif case == "no_train":
        for shard in root.glob("*_train_*"):
            shard.rename(root / shard.name.replace("_train_", "_training_"))
    elif case == "corrupt":
        damaged = bytearray(first.read_bytes())
        damaged[40] ^= 0xFF
        first.write_bytes(bytes(damaged))
    elif case == "missing_shard":
        (root / "shapes_train_00001-of-00002.tfrecord").unlink()
    elif case == "two_prefixes":
        (root / "other_train_00000-of-00001.tfrecord").write_bytes(first.read_bytes())
    else:
        (root / "labels.txt").write_text("0:circle\nsquare\n")
    cfg = data_cfg("data=tfrecord", "data.max_bad_fraction=0.5")
    if case == "no_train":  # the set scans (tools evaluate scores its other splits); training refuses it
        assert scan_tfrecords(root, cfg).examples["train"] == []
    with pytest.raises(FinetuneError, match=expected) as error:
        open_source(cfg, root) if case == "no_train" else scan_tfrecords(root, cfg)
    assert "\n" not in str(error.value)
    if case == "two_prefixes":  # ... and naming the prefix settles it
        data = scan_tfrecords(root, data_cfg("data=tfrecord", "data.record_prefix=shapes", "data.max_bad_fraction=0.5"))
        assert len(data.examples["train"]) == 18


def test_split_names_select_the_shards(tmp_path):
    root = make_slim_set(tmp_path / "slim")
    swapped = data_cfg("data=tfrecord", "data.split_names.val=train", "data.split_names.train=validation",
                       "data.max_bad_fraction=0.5")
    data = scan_tfrecords(root, swapped)
    assert [len(data.examples[s]) for s in ("train", "val", "test")] == [9, 18, 0]


# ---------------------------------------------------------------- csv


def make_images(folder: Path, count: int = 4) -> list[str]:
    """``count`` images per class under folder/<class>/, their paths relative to ``folder``."""
    written = []
    for label, name in CLASSES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / name / f"{i}.jpg").write_bytes(image_bytes(label, 10 * label + i))
            written.append(f"{name}/{i}.jpg")
    return written


def test_a_csv_with_a_header_and_a_split_column(tmp_path):
    paths = make_images(tmp_path / "images")
    splits = ["train", "train", "validation", "test"]
    rows = [f"images/{p},{p.split('/')[0]},{splits[i % 4]}" for i, p in enumerate(paths)]
    (tmp_path / "data.csv").write_text("Path,Label,Split\n" + "\n".join(rows) + "\n\n")
    data = scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))
    assert data.class_names == ["circle", "square", "stripes"]
    assert [len(data.examples[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    first = data.examples["train"][0]
    assert first.key == "images/circle/0.jpg" and first.label == 0
    assert Path(first.reference) == tmp_path / "images/circle/0.jpg"
    assert [e.key for e in data.examples["val"]] == ["images/circle/2.jpg", "images/square/2.jpg",
                                                    "images/stripes/2.jpg"]


def test_a_csv_without_header_or_split_column_splits_by_path(tmp_path):
    folder = tmp_path / "images"
    paths = make_images(folder, count=10)
    absolute = str(folder / paths[0])
    rows = [absolute + ",circle"] + [f'"{p}", {p.split("/")[0]}' for p in paths[1:]]
    (folder / "list.csv").write_text("\r\n".join(rows) + "\r\n", encoding="utf-8-sig")
    data = scan_csv(folder / "list.csv", data_cfg("data=csv"))
    assert sum(len(data.examples[s]) for s in ("train", "val", "test")) == 30 and not data.bad
    by_key = {e.key: e for split in ("train", "val", "test") for e in data.examples[split]}
    assert by_key[absolute].reference == absolute and by_key[absolute].label == 0
    assert Path(by_key["square/3.jpg"].reference) == folder / "square/3.jpg"
    assert data.examples["train"] and data.examples["val"]  # 30 paths, split by data.split's fractions


def test_missing_and_broken_files_in_a_csv_are_bad_files(tmp_path):
    paths = make_images(tmp_path, count=4)
    (tmp_path / "circle/text.jpg").write_text("not an image")
    rows = [f"{p},{p.split('/')[0]},{'validation' if p.endswith('/0.jpg') else 'train'}" for p in paths]
    rows += ["nowhere.jpg,circle,train", "circle/text.jpg,circle,train"]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    data = scan_csv(tmp_path / "data.csv", data_cfg("data=csv", "data.max_bad_fraction=0.3"))
    assert {b.key: b.reason for b in data.bad} == {"nowhere.jpg": "no such file",
                                                  "circle/text.jpg": "not an image (no JPEG, PNG, GIF or BMP header)"}
    assert len(data.examples["train"]) == 9 and len(data.examples["val"]) == 3
    with pytest.raises(FinetuneError, match="(?s)too many files.*nowhere.jpg: no such file"):
        scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))


def test_malformed_csv_rows_are_one_message_with_their_lines(tmp_path):
    make_images(tmp_path, count=1)
    (tmp_path / "data.csv").write_text("path,label,split\ncircle/0.jpg,circle,train\nsquare/0.jpg,,train\n"
                                       "stripes/0.jpg,stripes,training\nx.jpg,circle\ncircle/0.jpg,square,test\n")
    with pytest.raises(FinetuneError) as error:
        scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))
    message = str(error.value)
    assert str(tmp_path / "data.csv") in message and "4 row(s)" in message
    for expected in ("line 3: an empty label", "line 4: the split 'training'", "line 5: 2 columns",
                     "line 6: 'circle/0.jpg' is listed again (first on line 2)", "Fix or remove those rows"):
        assert expected in message, expected
    with pytest.raises(FinetuneError, match="is a directory|a directory"):
        scan_csv(tmp_path, data_cfg("data=csv"))
    with pytest.raises(FinetuneError, match="does not exist"):
        scan_csv(tmp_path / "none.csv", data_cfg("data=csv"))


def test_a_source_that_needs_a_root_says_so():
    for name in ("tfrecord", "csv"):
        cfg = compose_config([f"data={name}"])
        with pytest.raises(FinetuneError, match=f"'data.root' is unset; data.name={name} needs it"):
            data_root(cfg.data, cfg.paths)


# ---------------------------------------------------------------- bad files in an image folder


def make_odd_folder(root: Path) -> None:
    """Good RGB images, a grayscale, an RGBA and a 16-bit PNG (all trainable), a truncated JPEG and a
    text file named .jpg (bad)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            (root / name / f"{i}.jpg").write_bytes(image_bytes(label, i))
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), np.uint8), "L").save(root / "a/gray.png")
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 4), np.uint8), "RGBA").save(root / "a/rgba.png")
    Image.fromarray(rng.integers(0, 65535, (SIZE, SIZE), np.uint16)).save(root / "b/deep.png")
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), np.uint8)).save(whole, "JPEG")
    whole = whole.getvalue()
    (root / "b/cut.jpg").write_bytes(whole[:len(whole) // 2])
    (root / "b/notes.jpg").write_text("these are my notes, not a picture\n")


def test_an_image_folder_scan_lists_the_bad_files_and_keeps_the_odd_good_ones(tmp_path):
    make_odd_folder(tmp_path)
    data = scan_image_folder(tmp_path, data_cfg("data.max_bad_fraction=1.0"))
    report = data.bad_files_report()
    assert sorted((f["file"], f["reason"]) for f in report["files"]) == [
        ("b/cut.jpg", "truncated JPEG (its end is missing)"),
        ("b/notes.jpg", "not an image (no JPEG, PNG, GIF or BMP header)")]
    assert sum(report["scanned"].values()) == 17 and sum(report["skipped"].values()) == 2
    kept = {e.key: e for split in ("train", "val", "test") for e in data.examples[split]}
    assert len(kept) == 15 and {"a/gray.png", "a/rgba.png", "b/deep.png"} <= set(kept)
    odd = [kept[key] for key in ("a/gray.png", "a/rgba.png", "b/deep.png")]
    pixels = decode_images(list(data.reader.read_bytes(odd)), 16, [e.key for e in odd])
    assert pixels.shape == (3, 16, 16, 3) and 0 <= pixels.min() and pixels.max() <= 255
    assert json.loads(json.dumps(report)) == report


def test_too_many_bad_files_in_an_image_folder_is_one_message(tmp_path):
    make_odd_folder(tmp_path)
    with pytest.raises(FinetuneError, match="too many files") as error:
        scan_image_folder(tmp_path, data_cfg("data.max_bad_fraction=0"))
    message = str(error.value)
    assert "data.max_bad_fraction=0" in message and "Traceback" not in message
    assert "cut.jpg" in message or "notes.jpg" in message


# ---------------------------------------------------------------- end to end


# A source trains: the tiny profile's backbone (conftest.TINY_BACKBONE, 32 x 32 like these images), a few steps.
# The command line runs in this process (conftest.cli): these tests are about sources, not the process.
QUICK = ["experiment=mobilenet_head", *TINY_BACKBONE, "restore.checkpoint=demo", "train.steps=6",
         "train.eval_every=null", "data.batch_size=8", "export.parity_images=4"]


@pytest.mark.slow
def test_a_slim_tfrecord_set_trains_and_exports(demo_cache, tmp_path):
    root = make_slim_set(tmp_path / "slim")
    run_dir = tmp_path / "run"
    result = cli(["finetune", *QUICK, "data=tfrecord", f"data.root={root}", "data.max_bad_fraction=0.5",
                  f"hydra.run.dir={run_dir}"], cwd=tmp_path, cache=demo_cache)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "export/model.json").is_file()
    assert metrics["export"]["parity_images"] == 4 and metrics["export"]["parity"]
    assert (run_dir / "export/labels.txt").read_text().split() == ["circle", "square", "stripes"]
    bad = json.loads((run_dir / "bad_files.json").read_text())
    assert [f["file"] for f in bad["files"]] == ["shapes_train_00000-of-00002.tfrecord:4"]


@pytest.mark.slow
def test_a_csv_source_trains(demo_cache, tmp_path):
    paths = make_images(tmp_path / "images", count=6)
    splits = ["train", "train", "train", "train", "validation", "test"]
    rows = [f"images/{p},{p.split('/')[0]},{splits[i % 6]}" for i, p in enumerate(paths)]
    (tmp_path / "data.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    result = cli(["finetune", *QUICK, "export.enabled=false", "data=csv", f"data.root={tmp_path / 'data.csv'}",
                  f"hydra.run.dir={run_dir}"], cwd=tmp_path, cache=demo_cache)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6 and set(metrics) >= {"val", "test"}


@pytest.mark.slow
def test_a_folder_with_odd_and_bad_images_trains_and_lists_the_bad_ones(demo_cache, tmp_path):
    make_odd_folder(tmp_path / "images")
    cfg = compose_config([*QUICK, f"paths.cache_dir={demo_cache}", f"data.root={tmp_path / 'images'}",
                          "data.max_bad_fraction=0.5", "data.split.train=0.5", "data.split.val=0.5",
                          "data.split.test=0"])
    metrics = run_pipeline(cfg, tmp_path / "run")
    assert metrics["steps"] == 6 and max(metrics["export"]["parity"].values()) < 1e-4
    bad = json.loads((tmp_path / "run/bad_files.json").read_text())
    assert sorted(f["file"] for f in bad["files"]) == ["b/cut.jpg", "b/notes.jpg"]
    trained_on = json.loads((tmp_path / "run/run.json").read_text())["data"]
    assert sum(trained_on["images"].values()) == 15 and trained_on["bad_files_skipped"] == 2


# ---------------------------------------------------------------- classes come from usable examples (issue 18)


def old_split(key: str, split) -> str:
    """The split rule before issue 18, written out: a sha1 of the key, compared with the fractions."""
    position = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "train" if position < split.train else "val" if position < split.train + split.val else "test"


def split_by_key(data) -> dict[str, str]:
    return {example.key: split for split in ("train", "val", "test") for example in data.examples[split]}


def test_a_class_whose_only_file_is_skipped_is_one_message_naming_it(tmp_path):
    make_images(tmp_path, count=12)
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra/photo.jpg").write_text("<html>403 Forbidden</html>\n")
    cfg = data_cfg("data.max_bad_fraction=0.5")
    assert scan_image_folder(tmp_path, cfg).class_names[-1] == "zebra"  # the scan lists it; opening it refuses
    with pytest.raises(FinetuneError) as error:
        open_source(cfg, tmp_path)
    message = str(error.value)
    for expected in ("1 class(es) with no usable training image", "'zebra': 1 file(s) skipped: zebra/photo.jpg: not an "
                     "image", "remove its folder", str(tmp_path)):
        assert expected in message, (expected, message)
    assert "Traceback" not in message and "circle" not in message


def test_a_csv_header_in_a_common_spelling_is_a_header_not_a_class(tmp_path, caplog):
    paths = make_images(tmp_path, count=4)
    splits = ["train", "train", "validation", "test"]
    for header, row in [("filename,label", "{p},{c}"), ("Image , Class", "{p},{c}"), ("label,file_path", "{c},{p}"),
                        ("url,category", "{p},{c}"), ("File,Target,Subset", "{p},{c},{s}")]:
        rows = [row.format(p=p, c=p.split("/")[0], s=splits[i % 4]) for i, p in enumerate(paths)]
        (tmp_path / "data.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
        with caplog.at_level("INFO", logger="finetune.data.csv"):
            data = open_source(data_cfg("data=csv"), tmp_path / "data.csv")
        assert data.class_names == ["circle", "square", "stripes"] and not data.bad, header
        assert sum(len(data.examples[s]) for s in ("train", "val", "test")) == 12, header
        assert "is a header: paths from column" in caplog.text, header
        caplog.clear()
    # A first row that is an image of a known class is data, not a header.
    (tmp_path / "data.csv").write_text("\n".join(f"{p},{p.split('/')[0]}" for p in paths) + "\n")
    assert sum(len(v) for v in scan_csv(tmp_path / "data.csv", data_cfg("data=csv")).examples.values()) == 12


def test_one_image_under_two_spellings_is_one_example_in_one_split(tmp_path, caplog):
    paths = make_images(tmp_path, count=4)
    rows = [f"{p},{p.split('/')[0]}" for p in paths] + [f"./{paths[0]}, circle", f"square/../{paths[1]},circle"]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    data = scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))
    assert sorted(split_by_key(data)) == sorted(paths)  # each file once, under the spelling the file system uses
    assert data.bad_files_report()["duplicates"] == [{"file": f"./{paths[0]}", "same_as": paths[0]},
                                                     {"file": f"square/../{paths[1]}", "same_as": paths[1]}]
    assert "2 duplicate path(s)" in data.summary()
    with caplog.at_level("WARNING", logger="finetune.pipeline"):  # and a run's log says so
        load_data(data_cfg("data=csv", "data.split.train=0.7", "data.split.val=0.3", "data.split.test=0"),
                  tmp_path / "data.csv")
    assert "Left out 2 path(s) naming a file listed already (e.g. ./circle/0.jpg, the same file as circle/0.jpg)" \
        in caplog.text
    # Listed first under the other spelling: the same example, the same split.
    (tmp_path / "data.csv").write_text("\n".join(rows[::-1]) + "\n")
    assert split_by_key(scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))) == split_by_key(data)
    # Under another label, or in two splits: refused, naming both lines.
    (tmp_path / "data.csv").write_text(f"{paths[0]},circle,train\n./{paths[0]},circle,test\n{paths[5]},square,train\n")
    with pytest.raises(FinetuneError, match=r"(?s)1 file\(s\) more than once.*line 1: 'circle/0.jpg' \(circle, train\) "
                                            r"and line 2: './circle/0.jpg' \(circle, test\).*List each image once"):
        scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))


def test_a_symlink_beside_its_target_or_two_links_to_one_file_are_one_example(tmp_path):
    root = tmp_path / "images"
    make_images(root, count=4)
    (tmp_path / "store.jpg").write_bytes(image_bytes(1, 77))
    (root / "circle/link_to_0.jpg").symlink_to(root / "circle/0.jpg")
    (root / "square/a.jpg").symlink_to(tmp_path / "store.jpg")
    (root / "square/b.jpg").symlink_to(tmp_path / "store.jpg")
    data = scan_image_folder(root, data_cfg())
    assert "circle/link_to_0.jpg" not in split_by_key(data) and "circle/0.jpg" in split_by_key(data)
    assert [("square/a.jpg" in split_by_key(data)), ("square/b.jpg" in split_by_key(data))] == [True, False]
    assert data.bad_files_report()["duplicates"] == [{"file": "circle/link_to_0.jpg", "same_as": "circle/0.jpg"},
                                                     {"file": "square/b.jpg", "same_as": "square/a.jpg"}]
    (root / "stripes/circle_again.jpg").symlink_to(root / "circle/1.jpg")  # one image, two classes
    with pytest.raises(FinetuneError, match=r"(?s)circle/1.jpg \(circle\) and stripes/circle_again.jpg \(stripes\)"):
        scan_image_folder(root, data_cfg())


def test_without_duplicates_keys_and_splits_are_those_of_the_old_rule(tmp_path):
    """Runs before issue 18 keep their splits: every spelling, symlinks to files elsewhere included."""
    root = tmp_path / "images"
    paths = make_images(root, count=20)
    (tmp_path / "elsewhere").mkdir()
    for i in range(20):  # a symlink farm: each link to its own file outside data.root
        (tmp_path / f"elsewhere/{i}.jpg").write_bytes(image_bytes(2, 500 + i))
        (root / f"stripes/link{i}.jpg").symlink_to(tmp_path / f"elsewhere/{i}.jpg")
    cfg = data_cfg()
    folder = scan_image_folder(root, cfg)
    assert len(split_by_key(folder)) == 80 and not folder.duplicates
    assert split_by_key(folder) == {key: old_split(key, cfg.split) for key in split_by_key(folder)}
    assert "duplicates" not in folder.bad_files_report()
    spellings = [f"./images/{p}" if i % 3 == 0 else str(root / p) if i % 3 == 1 else f"images/{p}"
                 for i, p in enumerate(paths)]
    (tmp_path / "data.csv").write_text("\n".join(f"{s},{p.split('/')[0]}" for s, p in zip(spellings, paths)) + "\n")
    listed = scan_csv(tmp_path / "data.csv", data_cfg("data=csv"))
    assert sorted(split_by_key(listed)) == sorted(spellings)
    assert split_by_key(listed) == {key: old_split(key, cfg.split) for key in spellings}


def test_the_shards_names_are_checked_without_tensorflow(tmp_path):
    """finetune.data.shards reads only file names: a run checks them before TensorFlow loads (resolve.path_problems;
    tests/test_cli.py's probe shows that importing it loads no TensorFlow)."""
    from finetune.config import compose_config
    from finetune.data.shards import shard_problems

    cfg = compose_config(["data=tfrecord", f"data.root={tmp_path}"]).data
    assert shard_problems(tmp_path, cfg)[0].startswith(f"data.name=tfrecord needs {tmp_path / 'labels.txt'}")
    (tmp_path / "labels.txt").write_text("0:a\n")
    (tmp_path / "x_validation_00000-of-00001.tfrecord").write_bytes(b"")
    only_validation = shard_problems(tmp_path, cfg)
    assert len(only_validation) == 1 and "no shard of the training split" in only_validation[0]
    (tmp_path / "x_train_00000-of-00002.tfrecord").write_bytes(b"")
    assert "do not form one complete set" in shard_problems(tmp_path, cfg)[0]
    (tmp_path / "x_train_00001-of-00002.tfrecord").write_bytes(b"")
    assert shard_problems(tmp_path, cfg) == []
    (tmp_path / "y_train.tfrecord").write_bytes(b"")
    assert "under 2 prefixes" in shard_problems(tmp_path, cfg)[0]
    assert shard_problems(tmp_path, compose_config(["data=tfrecord", "data.record_prefix=x"]).data) == []


# ---------------------------------------------------------------- folder layouts (issue 19)


def test_a_split_folder_layout_is_read_as_its_folders_say_and_auto_picks_it(tmp_path, caplog):
    """root/train/<class>/, root/validation/<class>/ (or val/), root/test/<class>/: the layout of timm and
    ImageNet. It once trained a "train vs validation" classifier; now the classes are the training folder's."""
    for split, count in (("train", 6), ("validation", 2), ("test", 2)):
        make_images(tmp_path / split, count)
    shutil.rmtree(tmp_path / "test/stripes")  # a class the test split lacks: reported, not refused
    with caplog.at_level("INFO", logger="finetune.data.image_folder"):
        data = scan_image_folder(tmp_path, data_cfg())  # data.layout=auto
    assert data.class_names == ["circle", "square", "stripes"]
    assert {split: len(data.examples[split]) for split in SPLITS} == {"train": 18, "val": 6, "test": 4}
    assert all(e.key.startswith(f"{folder}/") for split, folder in (("train", "train"), ("val", "validation"),
                                                                   ("test", "test")) for e in data.examples[split])
    assert all(data.class_names[e.label] == e.key.split("/")[1] for split in SPLITS for e in data.examples[split])
    assert "has no images of stripes" in caplog.text
    (tmp_path / "validation").rename(tmp_path / "val")  # the other usual name of the validation folder
    assert len(scan_image_folder(tmp_path, data_cfg("data.layout=split_folders")).examples["val"]) == 6
    # Asked for: the split names are classes after all (split by hash, as for any class folders).
    as_classes = scan_image_folder(tmp_path, data_cfg("data.layout=class_folders"))
    assert as_classes.class_names == ["test", "train", "val"]


def test_split_names_beside_other_folders_and_unknown_held_out_classes_are_refused(tmp_path):
    make_images(tmp_path / "train", 3)
    make_images(tmp_path, 3)  # circle/, square/, stripes/ beside train/: which layout is it?
    with pytest.raises(FinetuneError, match=r"folders named like splits \(train\) beside others \(circle, square, "
                                            r"stripes\).*classifier of split names.*data.layout=class_folders"):
        scan_image_folder(tmp_path, data_cfg())
    with pytest.raises(FinetuneError, match=r"data.layout=split_folders reads .* circle, square, stripes are not a "
                                            r"split name"):
        scan_image_folder(tmp_path, data_cfg("data.layout=split_folders"))
    for name in ("circle", "square", "stripes"):
        shutil.rmtree(tmp_path / name)
    make_images(tmp_path / "val", 2)
    (tmp_path / "val/zebra").mkdir()
    (tmp_path / "val/zebra/0.jpg").write_bytes(image_bytes(0, 99))
    with pytest.raises(FinetuneError, match=r"The val folder .*val has class folder\(s\) the training folder lacks: "
                                            r"zebra.*cannot predict a class it was not trained on"):
        scan_image_folder(tmp_path, data_cfg())
