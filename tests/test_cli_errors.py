"""Bad input, as a user meets it on the command line: one clear message, exit 2, no traceback."""
import socket

import pytest
from conftest import run_cli


def _closed_port() -> int:
    with socket.socket() as probe:  # bind then release: nothing listens there afterwards
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def garbage_checkpoint(tmp_path):
    (tmp_path / "broken.ckpt.index").write_bytes(b"this is not a checkpoint index")
    (tmp_path / "broken.ckpt.data-00000-of-00001").write_bytes(b"nor is this data")
    return tmp_path / "broken.ckpt"


CASES = {
    "unknown backbone": (["backbone.name=mobilenet_v9"], ["backbone.name", "mobilenet_v1"]),
    "wrong cut name": (["backbone.cut=Conv2d_11_pointwize"], ["backbone.cut", "Conv2d_11_pointwise"]),
    "shape mismatch": (["backbone.params.depth_multiplier=0.5"],
                       ["restore.checkpoint", "shape mismatch: MobilenetV1/Conv2d_0/weights graph [3, 3, 3, 16] "
                                              "vs checkpoint [3, 3, 3, 8]"]),
    "missing variable": (["restore.include=[MobilenetV1/,head/]"],
                         ["restore.checkpoint", "missing in checkpoint: head/"]),
    "unreadable checkpoint": (["restore.checkpoint=GARBAGE"], ["restore.checkpoint", "broken.ckpt"]),
    "offline zoo name": (["restore.checkpoint=zoo:mobilenet_v1_0.25_128"], ["mobilenet_v1_0.25_128.tgz", "tar"]),
    "unknown zoo name": (["restore.checkpoint=zoo:mobilenet_v1_0.3_96"],
                         ["restore.checkpoint", "not a published TF-Slim zoo checkpoint", "mobilenet_v1_0.25_128"]),
    # the Keras recipe's head on the demo's 6x6 cut: its 3x3 VALID conv leaves 4x4 for a 5x5 VALID pool
    "pool window over the map": (["head=keras_recipe"],
                                 ["'avg_pool_1'", "5x5 window", "only 4x4", "[None, 6, 6, 128]", "padding SAME"]),
}


@pytest.mark.slow  # one CLI subprocess per case
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_with_one_clear_message(case, demo_cache, garbage_checkpoint, tmp_path, monkeypatch):
    overrides, expected = CASES[case]
    overrides = [o.replace("GARBAGE", str(garbage_checkpoint)) for o in overrides]
    monkeypatch.setenv("FINETUNE_ZOO_URL", f"http://127.0.0.1:{_closed_port()}")
    result = run_cli(["finetune", "experiment=mobilenet_head", f"hydra.run.dir={tmp_path}/run", *overrides],
                     cwd=tmp_path, cache=demo_cache, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    for fragment in expected:
        assert fragment in output, (fragment, output[-3000:])
