"""The one selection rule behind restore.include/exclude and optimizer.var_list."""
import pytest

from finetune.errors import FinetuneError
from finetune.selection import select

NAMES = [
    "MobilenetV1/Conv2d_1_pointwise/weights",
    "MobilenetV1/Conv2d_10_pointwise/weights",
    "MobilenetV1/Conv2d_1_pointwise/BatchNorm/moving_mean",
    "head/dense_3/weights:0",
    "global_step",
]


def test_scope_with_slash_does_not_leak_into_longer_names():
    assert select(NAMES, ["MobilenetV1/Conv2d_1_pointwise/"]) == [NAMES[0], NAMES[2]]


def test_patterns_match_at_the_start_only():
    assert select(NAMES, ["weights"]) == []
    assert select(NAMES, [".*weights"]) == [NAMES[0], NAMES[1], NAMES[3]]


def test_exclude_wins_and_tensor_suffix_is_ignored():
    assert select(NAMES, ["head/", "global_step"], ["global_step$"]) == ["head/dense_3/weights:0"]
    assert select(NAMES, ["head/dense_3/weights$"]) == ["head/dense_3/weights:0"]


def test_invalid_regex_names_the_key():
    with pytest.raises(FinetuneError, match="optimizer.var_list"):
        select(NAMES, ["head/("], key="optimizer.var_list")
