"""``tools predict`` and ``tools evaluate`` on every format the export writes, a run directory, folders and CSV
lists: the same predictions and metrics as the training session (conftest's ``tiny_run``: every format on), bad
images skipped and listed. Nothing here trains: the session's numbers are the run's predictions.jsonl and
metrics.json."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import cli

TOLERANCE = 1e-4  # export.parity_tolerance: what the export promises of every format


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run[0]


def _session(run_dir: Path, split: str | None = None) -> dict[str, dict]:
    """The run's final evaluation, per example key (relative to data.root): label, predicted, probabilities."""
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return {row["example"]: row for row in rows if split is None or row["split"] == split}


def _data_root(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "run.json").read_text())["data"]["root"])


def _classes(run_dir: Path) -> list[str]:
    return (run_dir / "export" / "labels.txt").read_text().split()


def _predict(args: list[str], cwd: Path) -> tuple[list[dict], str]:
    result = cli(["finetune.tools", "predict", *args, "--json"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def _probabilities(entry: dict, classes: int) -> np.ndarray:
    """An image's probabilities in class order, from its top-k (k = every class)."""
    found = np.full(classes, np.nan)
    for best in entry["top_k"]:
        found[best["index"]] = best["score"]
    return found


@pytest.mark.parametrize("model", ["frozen_graph.pb", "optimized_graph.pb", "saved_model", "model.tflite", "RUN"])
def test_predict_on_every_format_gives_the_session_probabilities(run_dir, model):
    classes = _classes(run_dir)
    session = _session(run_dir, "test")
    path = run_dir if model == "RUN" else run_dir / "export" / model
    got, _ = _predict([str(path), *session, "--top-k", str(len(classes))], cwd=_data_root(run_dir))
    assert [entry["image"] for entry in got] == list(session)
    for entry, row in zip(got, session.values()):
        assert entry["kind"] == "probabilities" and entry["top_k"][0]["label"] == row["predicted"], (entry, row)
        np.testing.assert_allclose(_probabilities(entry, len(classes)), row["probabilities"], atol=TOLERANCE, rtol=0)
    spread = np.ptp([row["probabilities"] for row in session.values()], axis=0)
    assert spread.max() > 1e-3  # images the model tells apart: a comparison that can fail


def _garbled(source: Path, target: Path) -> None:
    """A PNG whose header and end are intact (it passes the header check) but whose pixels cannot be decoded."""
    data = bytearray(source.read_bytes())
    for index in range(60, len(data) - 20):
        data[index] ^= 0x5A
    target.write_bytes(bytes(data))


def test_predict_reads_folders_and_csv_lists_and_skips_bad_images(run_dir, tmp_path):
    """A folder searched recursively, a CSV list with a header, a missing file; a text file named .png and a PNG
    TensorFlow cannot decode are skipped and listed (stderr, --json, --csv), and the rest classified as the session
    classified them."""
    session = _session(run_dir)
    root = _data_root(run_dir)
    keys = list(session)[:6]
    for key in keys[:4]:  # nested folders: class/sub/image
        (tmp_path / "folder" / Path(key).parent / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / key, tmp_path / "folder" / Path(key).parent / "sub" / Path(key).name)
    (tmp_path / "folder" / "notes.png").write_text("not an image\n")
    _garbled(root / keys[0], tmp_path / "folder" / "garbled.png")
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{root / key},x\n" for key in keys[4:]) +
                                       "missing.png,x\n")
    got, stderr = _predict([str(run_dir), "folder", "list.csv", "--top-k", "1", "--csv", "out.csv"], cwd=tmp_path)
    by_image = {entry["image"]: entry for entry in got}
    skipped = {"folder/notes.png": "not an image", "folder/garbled.png": "not a JPEG, PNG, GIF or BMP image",
               "missing.png": "cannot be read"}
    assert set(by_image) == {f"folder/{Path(k).parent}/sub/{Path(k).name}" for k in keys[:4]} | {
        str(root / key) for key in keys[4:]} | set(skipped)
    for name, reason in skipped.items():
        assert reason in by_image[name]["skipped"] and by_image[name]["top_k"] == []
        assert f"  {name}: {by_image[name]['skipped']}" in stderr
    assert "Skipped 3 of the 9 image(s)" in stderr
    for key in keys:
        entry = by_image.get(str(root / key)) or by_image[f"folder/{Path(key).parent}/sub/{Path(key).name}"]
        (best,) = entry["top_k"]
        assert best["label"] == session[key]["predicted"]
        assert abs(best["score"] - max(session[key]["probabilities"])) < TOLERANCE
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [row["image"] for row in rows] == [entry["image"] for entry in got]
    for row, entry in zip(rows, got):
        assert row["label_1"] == (entry["top_k"][0]["label"] if entry["top_k"] else "")
        assert row["skipped"] == entry.get("skipped", "")


def test_predict_with_only_bad_images_is_one_message(run_dir, tmp_path):
    (tmp_path / "notes.png").write_text("not an image\n")
    result = cli(["finetune.tools", "predict", str(run_dir), "notes.png"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "None of the 1 image(s) can be classified" in result.stderr and "notes.png: not an image" in result.stderr


def _same_metrics(got: dict, expected: dict) -> None:
    """Every number training's evaluation reports; the loss within float rounding (another graph computes it)."""
    assert {key: value for key, value in got.items() if key != "loss"} == {
        key: value for key, value in expected.items() if key != "loss"}
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)


def test_evaluate_a_run_scores_its_own_splits_as_training_did(run_dir, tmp_path):
    result = cli(["finetune.tools", "evaluate", str(run_dir), "--split", "val,test", "--output", "eval"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "eval"
    metrics, expected = (json.loads((path / "metrics.json").read_text()) for path in (folder, run_dir))
    for split in ("val", "test"):
        _same_metrics(metrics[split], expected[split])
    assert metrics["model"]["format"] == "graph" and metrics["model"]["classes"] == _classes(run_dir)
    got, want = (json.loads((path / "confusion_matrix.json").read_text()) for path in (folder, run_dir))
    assert got == want
    got, want = (json.loads((path / "misclassified.json").read_text()) for path in (folder, run_dir))
    assert got.keys() == want.keys() == {"val", "test"}
    for split in got:
        assert [{**e, "probability": None} for e in got[split]] == [{**e, "probability": None} for e in want[split]]
        np.testing.assert_allclose([e["probability"] for e in got[split]], [e["probability"] for e in want[split]],
                                   atol=TOLERANCE, rtol=0)
    got, want = (_session(path) for path in (folder, run_dir))
    assert list(got) == list(want)
    for key, row in got.items():
        assert (row["split"], row["label"], row["predicted"]) == (want[key]["split"], want[key]["label"],
                                                                  want[key]["predicted"])
        np.testing.assert_allclose(row["probabilities"], want[key]["probabilities"], atol=TOLERANCE, rtol=0)
    assert json.loads((folder / "bad_files.json").read_text())["files"] == []
    assert (folder / "confusion_matrix_test.png").read_bytes()[:4] == b"\x89PNG"
    assert "evaluation folder: eval" in result.stdout


def test_evaluate_a_tflite_file_on_a_csv_of_the_test_split(run_dir, tmp_path):
    """A model file (no run around it) on another source: a CSV listing the run's test images but those of the
    first class (so the CSV's class indices are not the model's: the names are matched), and a bad file. Its
    confusion matrix is the run's test matrix without the first class's row."""
    session = _session(run_dir, "test")
    root, classes = _data_root(run_dir), _classes(run_dir)
    kept = {key: row for key, row in session.items() if row["label"] != classes[0]}
    assert 0 < len(kept) < len(session)
    (tmp_path / "notes.png").write_text("not an image\n")
    rows = "".join(f"{root / key},{row['label']}\n" for key, row in kept.items())
    (tmp_path / "test.csv").write_text(f"path,label\n{rows}notes.png,{classes[1]}\n")
    result = cli(["finetune.tools", "evaluate", str(run_dir / "export" / "model.tflite"), "data=csv",
                  f"data.root={tmp_path / 'test.csv'}", "--output", "eval"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["format"] == "tflite" and metrics["data"]["name"] == "csv"
    assert metrics["data"]["classes"] == classes[1:] and metrics["all"]["images"] == len(kept)
    expected = np.array(json.loads((run_dir / "confusion_matrix.json").read_text())["test"]["matrix"])
    expected[0] = 0
    confusion = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())["all"]
    assert confusion["classes"] == classes and np.array_equal(confusion["matrix"], expected)
    assert metrics["all"]["accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    (bad,) = json.loads((tmp_path / "eval" / "bad_files.json").read_text())["files"]
    assert bad["file"] == "notes.png" and "not an image" in bad["reason"]
    assert "1 image(s) skipped" in result.stdout



def test_evaluate_on_tfrecord_shards_of_a_test_split_alone(run_dir, tmp_path):
    """TF-Slim-style shards holding only a test split (scoring needs no training shards): the run's test images
    through the frozen graph give the run's test confusion matrix."""
    from finetune.compat import tf

    session = _session(run_dir, "test")
    root, classes = _data_root(run_dir), _classes(run_dir)
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "labels.txt").write_text("".join(f"{index}:{name}\n" for index, name in enumerate(classes)))
    with tf.io.TFRecordWriter(str(folder / "mine_test_00000-of-00001.tfrecord")) as writer:
        for key, row in session.items():
            encoded = tf.train.BytesList(value=[(root / key).read_bytes()])
            label = tf.train.Int64List(value=[classes.index(row["label"])])
            feature = {"image/encoded": tf.train.Feature(bytes_list=encoded),
                       "image/class/label": tf.train.Feature(int64_list=label)}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    result = cli(["finetune.tools", "evaluate", str(run_dir / "export" / "frozen_graph.pb"), "data=tfrecord",
                  f"data.root={folder}", "--split", "test", "--output", "eval"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["data"]["name"] == "tfrecord" and metrics["test"]["images"] == len(session)
    expected = json.loads((run_dir / "confusion_matrix.json").read_text())["test"]
    assert json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())["test"] == expected

def test_evaluate_refuses_an_output_folder_that_holds_files(run_dir, tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "mine.txt").write_text("keep me\n")
    result = cli(["finetune.tools", "evaluate", str(run_dir), "--output", "eval"], cwd=tmp_path)
    assert result.returncode == 2 and "--output eval exists and is not an empty folder" in result.stderr
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["mine.txt"]


def test_an_onnx_model_without_the_extra_says_how_to_install_it(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with mock.patch.dict(sys.modules, {"finetune.export.onnx": None}):  # as if the module were not there
        result = cli(["finetune.tools", "predict", "model.onnx", "x.png"], cwd=tmp_path)
    assert result.returncode == 2 and 'pip install "finetune[onnx]"' in result.stderr, result.stderr


def test_predict_on_an_onnx_export_gives_the_session_probabilities(run_dir):
    pytest.importorskip("onnxruntime")  # the onnx extra (in the test extra): the tiny run exports model.onnx
    exported = sorted((run_dir / "export").glob("*.onnx"))
    assert exported, "the tiny run exported no .onnx model"
    classes = _classes(run_dir)
    session = _session(run_dir, "test")
    got, _ = _predict([str(exported[0]), *session, "--top-k", str(len(classes))], cwd=_data_root(run_dir))
    for entry, row in zip(got, session.values()):
        np.testing.assert_allclose(_probabilities(entry, len(classes)), row["probabilities"], atol=TOLERANCE, rtol=0)


def test_a_saved_model_with_variables_is_restored_by_our_own_saver(tmp_path):
    """A SavedModel from elsewhere that keeps its weights as variables: only what its signature's outputs need is
    checked and run (never the file's sharded saver, whose ops the gate refuses), the weights restored by a Saver
    built here. Its class names come from --labels."""
    from PIL import Image

    from finetune.compat import tf, tf1

    rng = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(tmp_path / f"{index}.png")
    with tf.Graph().as_default(), tf1.Session() as sess:
        images = tf1.placeholder(tf.float32, [None, 32, 32, 3], name="images")
        weights = tf1.get_variable("w", initializer=rng.standard_normal((3072, 3)).astype(np.float32) / 10000)
        probabilities = tf.nn.softmax(tf.matmul(tf.reshape(images, [-1, 3072]), weights), name="probabilities")
        sess.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(str(tmp_path / "saved"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "serving_default": tf1.saved_model.predict_signature_def({"images": images},
                                                                     {"probabilities": probabilities})})
        builder.save()
        from finetune.data.images import load_images

        pixels = load_images([tmp_path / f"{index}.png" for index in range(3)], 32)  # the tiny run's size: one decoder
        expected = sess.run(probabilities, {images: pixels})
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    got, _ = _predict(["saved", "0.png", "1.png", "2.png", "--labels", "labels.txt", "--top-k", "3"], cwd=tmp_path)
    for entry, row in zip(got, expected):
        assert entry["kind"] == "probabilities" and entry["top_k"][0]["label"] == "abc"[int(np.argmax(row))]
        np.testing.assert_allclose(_probabilities(entry, 3), row, atol=1e-6, rtol=0)
    assert np.ptp(expected, axis=0).max() > 1e-3 and expected.min() > 1e-3  # images told apart, no class certain
