"""The discovery tools: ``endpoints`` lists cut points, ``plan`` is a dry run that writes nothing."""
import shutil

import pytest
from conftest import ROOT, run_cli


@pytest.mark.slow
def test_endpoints_lists_the_recipe_cut_with_its_shape(tmp_path):
    result = run_cli(["finetune.tools", "endpoints", "backbone=mobilenet_v2_140",
                      "backbone.cut=MobilenetV2/expanded_conv_14/output:0"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(row for row in result.stdout.splitlines() if "MobilenetV2/expanded_conv_14/output:0" in row)
    assert line.startswith("*") and "[None, 7, 7, 224]" in line  # marked as the configured cut
    assert "Conv2d_11_pointwise" not in result.stdout


def test_endpoints_of_an_unknown_backbone_fails_cleanly(tmp_path):
    result = run_cli(["finetune.tools", "endpoints", "backbone.name=mobilenet_v9"], cwd=tmp_path)
    assert result.returncode == 2
    assert "mobilenet_v1" in result.stderr and "Traceback" not in result.stderr


def test_plan_prints_the_tables_and_writes_nothing(demo_cache, tmp_path):
    cache = tmp_path / "cache"  # a copy, so that "writes nothing" can be checked file by file
    shutil.copytree(demo_cache / "demo", cache / "demo")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(["finetune.tools", "plan", "experiment=mobilenet_head"], cwd=tmp_path, cache=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    for heading in ("## Restored (115)", "## Initialised", "## Trained (5)", "## Unused checkpoint entries (20)"):
        assert heading in result.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_plan_refuses_to_build_missing_demo_assets(tmp_path):
    result = run_cli(["finetune.tools", "plan", "experiment=mobilenet_head"], cwd=tmp_path, cache=tmp_path / "empty")
    assert result.returncode == 2 and "make_demo_assets.py" in result.stderr
    assert not (tmp_path / "empty").exists()
