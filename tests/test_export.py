"""The pipeline's export step: frozen, optimised, SavedModel and TFLite files, model.json, parity with the
training session, and ``predict`` on the exported graph.

What an export is made of does not depend on what was learnt: the tests read conftest's ``tiny_run`` (the
tiny profile, every format on), and the image_bytes export and the parity failure make tiny runs of their own
(trained on images: whether a head trains from cached features is test_feature_cache's subject).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import cli, run_pipeline, tiny_config

from finetune import graphs
from finetune.export import formats
from finetune.data import images
from finetune.export import optimize
from finetune.compat import tf
from finetune.errors import FinetuneError

# The tiny run (conftest.tiny_run) exports ONNX too where the onnx extra is installed (the test extra has it).
ONNX_INSTALLED = all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnxruntime"))

IMAGE_SIZE = 32  # the tiny profile (conftest.TINY_BACKBONE)
BACKBONE = "test_mobilenet_v1"
PARITY_IMAGES = 16  # export.parity_images' default
OUTPUTS = ("logits", "probabilities")


@pytest.fixture(scope="module")
def float_run(tiny_run):
    """The shared tiny run: float input, every format (SavedModel and TFLite)."""
    return tiny_run[0]


@pytest.fixture(scope="module")
def bytes_run(demo_cache, tiny_data, tmp_path_factory):
    """image_bytes input, with a test-time augmentation graph (eval.tta, export.tta) taking image bytes too."""
    run_dir = tmp_path_factory.mktemp("export_bytes")
    run_pipeline(tiny_config(demo_cache, tiny_data, "export.input=image_bytes", "export.saved_model=false",
                             "data.feature_cache=off", "eval.tta=[identity,center_crop_75]", "export.tta=true"),
                 run_dir)
    return run_dir


def _parity(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["export"]["parity"]


def _data_root(run_dir: Path) -> Path:
    """The folder val_predictions.json's image keys are relative to."""
    return Path(json.loads((run_dir / "run.json").read_text())["data"]["root"])


def _predict(run_dir: Path, model: str, paths: list[str]) -> list[dict]:
    result = cli(["finetune.tools", "predict", str(run_dir / "export" / model), *paths, "--json", "--top-k", "1"],
                 cwd=_data_root(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _assert_predict_agrees(run_dir: Path, model: str, count: int = 10) -> None:
    expected = json.loads((run_dir / "export/val_predictions.json").read_text())[:count]
    got = _predict(run_dir, model, [row["image"] for row in expected])
    assert [entry["image"] for entry in got] == [row["image"] for row in expected]
    for entry, row in zip(got, expected):
        (best,) = entry["top_k"]
        assert entry["kind"] == "probabilities"
        assert best["label"] == row["predicted"], (entry, row)
        assert abs(best["score"] - row["probability"]) < 1e-4, (entry, row)


@pytest.mark.slow
def test_every_format_matches_the_session(float_run):
    parity = _parity(float_run)
    formats = ("frozen", "optimized", "saved_model", "tflite") + (("onnx",) if ONNX_INSTALLED else ())
    assert set(parity) == {f"{fmt}_{out}" for fmt in formats for out in OUTPUTS}
    assert max(parity.values()) < 1e-4, parity
    export = json.loads((float_run / "metrics.json").read_text())["export"]
    # Every validation image, up to export.parity_images.
    validation = json.loads((float_run / "run.json").read_text())["data"]["images"]["val"]
    assert validation > 0 and export["parity_images"] == min(validation, PARITY_IMAGES)
    assert all((float_run / path).exists() for path in export["files"].values())  # relative to the run
    assert json.loads((float_run / "export/model.json").read_text())["parity"]["max_abs_diff"] == parity


@pytest.mark.slow
def test_optimized_graph_has_no_batch_norm_or_training_ops(float_run):
    frozen = graphs.load_graph_def(float_run / "export/frozen_graph.pb")
    optimized = graphs.load_graph_def(float_run / "export/optimized_graph.pb")
    assert {node.op for node in frozen.node} & set(optimize.BATCH_NORM_OPS)  # there was something to fold
    ops = {node.op for node in optimized.node}
    assert not ops & set(optimize.BATCH_NORM_OPS), ops
    assert not [op for op in ops if "BatchNorm" in op]
    assert not ops & optimize.TRAINING_ONLY_OPS
    assert not ops & {"VariableV2", "VarHandleOp", "IteratorGetNext", "PlaceholderWithDefault", "RandomUniform"}
    assert len(optimized.node) < len(frozen.node)
    assert graphs.placeholder_shape(optimized, "input") == [None, IMAGE_SIZE, IMAGE_SIZE, 3]


@pytest.mark.slow
def test_model_json_describes_the_export(float_run):
    meta = json.loads((float_run / "export/model.json").read_text())
    assert meta["input"] == "input:0" and meta["input_type"] == "float"
    assert meta["input_range"] == [0, 255] and meta["image_size"] == IMAGE_SIZE
    assert meta["outputs"] == {"logits": "logits:0", "probabilities": "probabilities:0"}
    assert meta["backbone"] == BACKBONE
    assert meta["labels"] == "labels.txt"
    assert meta["files"] == {"frozen_graph": "frozen_graph.pb", "optimized_graph": "optimized_graph.pb",
                             "saved_model": "saved_model", "tflite": "model.tflite", "labels": "labels.txt",
                             "val_predictions": "val_predictions.json",
                             **({"onnx": "model.onnx"} if ONNX_INSTALLED else {})}
    for name in meta["files"].values():
        assert (float_run / "export" / name).exists(), name


@pytest.mark.slow
def test_saved_model_serves_any_batch_size(float_run):
    meta = json.loads((float_run / "export/model.json").read_text())
    frozen = graphs.load_graph_def(float_run / "export/frozen_graph.pb")
    paths = [_data_root(float_run) / row["image"]
             for row in json.loads((float_run / "export/val_predictions.json").read_text())[:3]]
    pixels = images.load_images(paths, meta["image_size"])
    for batch in (pixels[:1], pixels):
        served = formats.run_saved_model(float_run / "export/saved_model", batch)
        (expected,) = graphs.run_graph_def(frozen, {"input:0": batch}, ["probabilities:0"])
        assert graphs.max_abs_diff(served["probabilities"], expected) < 1e-4


@pytest.mark.slow
def test_val_predictions_cover_the_validation_split(float_run):
    rows = json.loads((float_run / "export/val_predictions.json").read_text())
    metrics = json.loads((float_run / "metrics.json").read_text())
    labels = (float_run / "export/labels.txt").read_text().split()
    assert rows and {row["label"] for row in rows} <= set(labels) and {row["predicted"] for row in rows} <= set(labels)
    accuracy = sum(row["label"] == row["predicted"] for row in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["val"]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("model", ["frozen_graph.pb", "optimized_graph.pb"])
@pytest.mark.slow
def test_predict_agrees_with_validation_predictions(float_run, model):
    _assert_predict_agrees(float_run, model)


@pytest.mark.slow
def test_image_bytes_export(bytes_run):
    meta = json.loads((bytes_run / "export/model.json").read_text())
    assert meta["input"] == "image_bytes:0" and meta["input_type"] == "image_bytes"
    parity = _parity(bytes_run)
    assert set(parity) == {f"{fmt}_{out}" for fmt in ("frozen", "optimized", "tta") for out in OUTPUTS}
    assert max(parity.values()) < 1e-4, parity
    assert not (bytes_run / "export/saved_model").exists()
    assert meta["tta"] == {"graph": "tta_graph.pb", "views": ["identity", "center_crop_75"]}
    for name in ("frozen_graph.pb", "optimized_graph.pb", "tta_graph.pb"):
        graph_def = graphs.load_graph_def(bytes_run / "export" / name)
        placeholders = [node for node in graph_def.node if node.op == "Placeholder"]
        assert [node.name for node in placeholders] == ["image_bytes"]
        assert placeholders[0].attr["dtype"].type == tf.string.as_datatype_enum
        assert graphs.placeholder_shape(graph_def, "image_bytes") == [None]
    _assert_predict_agrees(bytes_run, "frozen_graph.pb")


def test_bad_export_input_names_the_key(demo_cache, tiny_data, tmp_path):
    with pytest.raises(FinetuneError, match=r"export\.input.*jpeg"):
        run_pipeline(tiny_config(demo_cache, tiny_data, "train.steps=1", "export.input=jpeg"), tmp_path)
    assert not list(tmp_path.iterdir())  # refused before the run directory got anything


@pytest.mark.slow
def test_parity_failure_names_the_format_and_keeps_the_files(demo_cache, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "max_abs_diff", lambda got, want: 1.0)  # every format differs by 1.0
    overrides = ("train.steps=1", "export.saved_model=false", "data.feature_cache=off")
    with pytest.raises(FinetuneError, match="do not deploy") as info:
        run_pipeline(tiny_config(demo_cache, tiny_data, *overrides), tmp_path)
    assert "frozen" in str(info.value) and "optimized" in str(info.value)
    assert (tmp_path / "export-failed/frozen_graph.pb").is_file()
    assert not (tmp_path / "export-failed/model.json").exists()  # written only by an export that passed parity
    assert not (tmp_path / "export").exists()  # export/ only ever holds a checked export


def _docs_command(page: str, tool: str) -> list[str]:
    """The one ``python -m finetune.tools TOOL ...`` line of a page's code blocks, split as a shell splits it."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / page).read_text()
    blocks = text.split("```")[1::2]
    lines = [line for block in blocks for line in block.splitlines()
             if line.startswith(f"python -m finetune.tools {tool} ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # builds the export tower and freezes it
def test_the_docs_freeze_example_freezes_a_run_like_its_export(float_run, tiny_data, tmp_path):
    """Issue 18, item 6: docs/export.md's `tools freeze` line, as written, on a finished run (no .meta: the graph
    is rebuilt from its config.yaml); the frozen graph computes the run's own export's logits."""
    import numpy as np

    command = _docs_command("docs/export.md", "freeze")
    assert command[:3] == ["python", "-m", "finetune.tools"]
    assert not list((float_run / "checkpoints").glob("*.meta"))  # what made the example fail before
    (tmp_path / "run").symlink_to(float_run)  # `run` in the example: the run directory, never written into
    before = _tree(float_run)
    result = cli(command[2:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert _tree(float_run) == before
    written = [arg for flag, arg in zip(command, command[1:]) if flag == "--output"][0]
    frozen = graphs.load_graph_def(tmp_path / written)
    export = graphs.load_graph_def(float_run / "export" / "frozen_graph.pb")
    paths = sorted(str(p) for p in tiny_data.rglob("*.png"))[::9][:8]
    pixels = images.load_images(paths, IMAGE_SIZE)
    ours = graphs.run_graph_def(frozen, {"input:0": pixels}, ["logits:0", "probabilities:0"])
    theirs = graphs.run_graph_def(export, {"input:0": pixels}, ["logits:0", "probabilities:0"])
    for mine, expected in zip(ours, theirs):
        assert mine.shape == expected.shape == (len(paths), 5)
        np.testing.assert_allclose(mine, expected, atol=1e-5, rtol=0)
    assert np.ptp(theirs[0]) > 1e-3  # logits that differ between images: a comparison that can fail


@pytest.mark.slow  # runs the exported graph
def test_predict_reads_a_labels_file_with_a_byte_order_mark(float_run, tiny_data, tmp_path):
    """`--labels` saved by a Windows editor (a UTF-8 byte-order mark, CRLF, TF-Slim's N:name lines): the names
    printed are the run's class names, none with the mark stuck to it (issue 18)."""
    names = (float_run / "export" / "labels.txt").read_text().split()
    labels = tmp_path / "labels.txt"
    labels.write_bytes("".join(f"{i}:{name}\r\n" for i, name in enumerate(names)).encode("utf-8-sig"))
    image = sorted(str(p) for p in tiny_data.rglob("*.png"))[0]
    result = cli(["finetune.tools", "predict", str(float_run / "export" / "frozen_graph.pb"), image, "--labels",
                  str(labels), "--json", "--top-k", str(len(names))], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads(result.stdout)
    assert sorted(row["label"] for row in entry["top_k"]) == sorted(names)
    plain = _predict(float_run, "frozen_graph.pb", [image])[0]  # model.json's labels.txt: the same answer
    assert entry["top_k"][0]["label"] == plain["top_k"][0]["label"]
