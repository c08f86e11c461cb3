"""What a run was trained on, compared on resume (finetune/training/data_identity.py): the kinds of change
named in the message. The command-line refusals are in tests/test_run_state.py."""
from __future__ import annotations

import json

import pytest

from finetune.data.examples import Example, LabelledImages
from finetune.errors import FinetuneError
from finetune.training.data_identity import check_same_data, class_change


def _data(tmp_path, classes, splits):
    examples = {split: [Example(key, classes.index(key.split("/")[0]), key, size) for key, size in items]
                for split, items in splits.items()}
    return LabelledImages("image_folder", tmp_path, list(classes), examples)


BEFORE = {"train": [("a/1.png", 10), ("b/2.png", 20)], "val": [("a/3.png", 30)], "test": [("b/4.png", 40)]}


def _saved(tmp_path, data):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(data.splits_record()))
    return path


def test_the_class_list_is_held_to_names_and_order():
    assert class_change(["a", "b"], ["a", "b"]) is None
    assert "another order" in class_change(["a", "b"], ["b", "a"])
    assert class_change(["a", "b"], ["a", "c"]) == "class 'b' is gone and 'c' is new (renamed?)"
    assert class_change(["a", "b"], ["a", "b", "c", "d"]) == "added 'c', 'd'"
    assert class_change(["a", "b", "c"], ["a"]) == "removed 'b', 'c'"


def test_changed_examples_are_named_by_kind_and_accepted_only_on_request(tmp_path):
    saved = _saved(tmp_path, _data(tmp_path, ["a", "b"], BEFORE))
    assert check_same_data(saved, _data(tmp_path, ["a", "b"], BEFORE), "auto") is None
    moved = {"train": [("a/1.png", 10)], "val": [("a/3.png", 30), ("b/2.png", 20)], "test": [("b/4.png", 40)]}
    with pytest.raises(FinetuneError, match=r"1 moved \(e.g. b/2.png \(train -> val\)\)"):
        check_same_data(saved, _data(tmp_path, ["a", "b"], moved), "auto")
    resized = {**BEFORE, "test": [("b/4.png", 41)]}
    with pytest.raises(FinetuneError, match="same examples in the same splits, but the file list's sha256"):
        check_same_data(saved, _data(tmp_path, ["a", "b"], resized), "auto")
    removed = {**BEFORE, "test": []}
    change = check_same_data(saved, _data(tmp_path, ["a", "b"], removed), "accept_data_change")
    assert (change["added"], change["removed"], change["moved"]) == (0, 1, 0)
    assert change["examples"]["removed"] == ["b/4.png"]
    with pytest.raises(FinetuneError, match="other classes"):  # never accepted
        check_same_data(saved, _data(tmp_path, ["a", "c"], {"train": [], "val": [], "test": []}), "accept_data_change")


def test_a_run_directory_of_an_older_version_resumes_as_before(tmp_path):
    data = _data(tmp_path, ["a", "b"], BEFORE)
    record = data.splits_record()
    del record["file_list_sha256"]
    (tmp_path / "splits.json").write_text(json.dumps(record))
    assert check_same_data(tmp_path / "splits.json", _data(tmp_path, ["a", "b"], {**BEFORE, "test": []}),
                           "auto") is None
    assert check_same_data(tmp_path / "missing.json", data, "auto") is None
