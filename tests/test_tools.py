"""The discovery tools: ``endpoints`` lists cut points, ``plan`` is a dry run that writes nothing.

Run in-process (conftest.cli): what is checked is what they print, the files and the exit status.
"""
import shutil

import pytest
from conftest import ROOT, cli, tiny_overrides

from finetune.tools import COMMANDS
from finetune.tools import main as tools_main


@pytest.mark.slow
def test_endpoints_lists_the_recipe_cut_with_its_shape():
    result = cli(["finetune.tools", "endpoints", "backbone=mobilenet_v2_140",
                  "backbone.cut=MobilenetV2/expanded_conv_14/output:0"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(row for row in result.stdout.splitlines() if "MobilenetV2/expanded_conv_14/output:0" in row)
    assert line.startswith("*") and "[None, 7, 7, 224]" in line  # marked as the configured cut
    assert "Conv2d_11_pointwise" not in result.stdout


def test_endpoints_of_an_unknown_backbone_fails_cleanly(tmp_path):
    result = cli(["finetune.tools", "endpoints", "backbone.name=mobilenet_v9"], cwd=tmp_path)
    assert result.returncode == 2
    assert "mobilenet_v1" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_plan_prints_the_tables_and_writes_nothing(tiny_data, tmp_path):
    """The tiny profile: test_mobilenet_v1 (Conv2d_0 and three separable blocks, 5 variables per layer) restored
    from the demo backbone (the whole MobileNet v1, 27 layers), a conv_pool_dense head on five classes."""
    # A copy of the images and an empty cache, so that "writes nothing" can be checked file by file.
    cache, data = tmp_path / "cache", tmp_path / "images"
    shutil.copytree(tiny_data, data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli(["finetune.tools", "plan", *tiny_overrides(cache, data)], cwd=tmp_path, cache=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    for heading in ("## Restored (35)", "## Initialised", "## Trained (5)", "## Unused checkpoint entries (100)"):
        assert heading in result.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_plan_refuses_to_build_missing_demo_assets(tmp_path):
    result = cli(["finetune.tools", "plan", "experiment=mobilenet_head"], cwd=tmp_path, cache=tmp_path / "empty")
    assert result.returncode == 2 and "make_demo_assets.py" in result.stderr
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_tool_prints_its_help(command, capsys):
    """argparse formats help texts with %: a stray one breaks --help (it once did, for summarize)."""
    with pytest.raises(SystemExit) as exit_:
        tools_main(["--help"] if command is None else [command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
