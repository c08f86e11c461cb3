"""The demo backbone (shipped, converged) and the demo's numbers on another floating-point path (issue 17)."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from finetune import demo
from finetune.compat import tf1
from finetune.model.backbones.registry import get_network_fn
from finetune.weights.readers import read_checkpoint

# Neither the export nor the evaluations during training (16 of them by default) change the numbers compared.
FIRST_COMMAND = ["experiment=mobilenet_head", "export.enabled=false", "train.eval_every=null"]
SEEDS = (0, 1, 2, 3, 4)  # 0 is the first command's own


def test_the_shipped_backbone_is_the_one_its_record_describes():
    record = demo.source_task()
    assert demo.file_digests(demo.SHIPPED) == record["sha256"]  # the files are those the record was written with
    assert record["recipe"] == asdict(demo.PRETRAIN)  # and the code's recipe is the one that made them
    curve = [accuracy for _, accuracy in record["val_accuracy_by_step"]]
    assert len(curve) >= 5 and record["val_accuracy"] >= 0.95
    assert max(curve[-3:]) - min(curve[-3:]) <= 0.02, curve  # levelled off: the last evaluations agree

    with tf1.Graph().as_default():  # the MobileNet v1 0.25 model variables below the logits, official names
        network_fn = get_network_fn("mobilenet_v1", num_classes=len(record["classes"]), **demo.DEMO_BACKBONE["params"])
        network_fn(tf1.placeholder(tf1.float32, [1, 96, 96, 3]))
        expected = {v.op.name: v.shape.as_list() for v in tf1.global_variables()
                    if "/Logits/" not in v.op.name}
    shipped = {name: list(value.shape) for name, value in read_checkpoint(demo.checkpoint()).items()}
    assert shipped == expected


def finetune(arguments: list[str], cache: Path, onednn: str, cwd: Path) -> None:
    env = {**os.environ, "FINETUNE_CACHE": str(cache), "TF_ENABLE_ONEDNN_OPTS": onednn}
    result = subprocess.run([sys.executable, "-m", "finetune", *arguments], cwd=cwd, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def accuracies(run_dir: Path) -> tuple[float, float, int, int]:
    """Validation and test accuracy, and the sizes of the two splits."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    sizes = json.loads((run_dir / "splits.json").read_text())["splits"]
    return metrics["val"]["accuracy"], metrics["test"]["accuracy"], len(sizes["val"]), len(sizes["test"])


@pytest.mark.slow
def test_the_first_command_with_onednn_on_and_off_agrees_within_its_seed_spread(demo_cache, tmp_path):
    """oneDNN on and off take different floating-point paths through the same ops, as another CPU does. The
    first command's accuracy with each must differ by no more than its spread over five training seeds (or one
    example, the resolution of an accuracy, where the seeds all agree). Each command is its own process, as a
    user runs it: TF_ENABLE_ONEDNN_OPTS is read when TensorFlow loads."""
    seeds = ",".join(map(str, SEEDS))
    finetune(["-m", *FIRST_COMMAND, f"train.seed={seeds}", f"hydra.sweep.dir={tmp_path / 'on'}"],
             demo_cache, "1", tmp_path)
    on = [accuracies(next((tmp_path / "on").glob(f"{index}_*"))) for index in range(len(SEEDS))]
    finetune([*FIRST_COMMAND, f"hydra.run.dir={tmp_path / 'off'}"], demo_cache, "0", tmp_path)
    off = accuracies(tmp_path / "off")

    # The demo's point: the restored backbone's features carry over to the target shapes (a randomly initialised
    # one stays at chance, 0.2 here: scripts/compare_init.py).
    assert min(on[0][:2]) >= 0.9, on[0]
    for index, split in enumerate(("val", "test")):
        results = sorted(run[index] for run in on)
        allowed = max(results[-1] - results[0], 1 / off[index + 2])
        difference = abs(on[0][index] - off[index])
        assert difference <= allowed + 1e-9, (
            f"{split} accuracy {on[0][index]:.3f} with oneDNN on, {off[index]:.3f} off: they differ by "
            f"{difference:.3f}, more than the seeds' spread {results[-1] - results[0]:.3f} ({results})")


# --- pretraining out of the user's way ----------------------------------------------------------------------

def _fake_run() -> None:
    """What a pretraining run writes: log records (a restore table), print(), stderr, progress."""
    from finetune.training.progress import make_progress

    logging.getLogger("finetune.pipeline").info("Restore from nothing\n  restored 0")
    print("printed by the job")
    sys.stderr.write("written to stderr\n")
    progress = make_progress(total=2, initial=0, every=1, batch_size=4)  # stderr is the log: lines, not a bar
    for step in (1, 2):
        progress.step(step, 0.5, 0.5, 0.01)
    progress.close()


def test_the_demo_pretraining_shows_one_line_and_keeps_its_details_in_its_own_log(tmp_path, monkeypatch):
    """pretrain() with its run replaced by a fake one (pretraining for real takes minutes): the console gets one
    line, saying what is made, how long it took and where the log is; the log holds what the run said."""
    console = io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)

    def fake(folder, cache_dir, recipe):
        _fake_run()
        return 0.99

    monkeypatch.setattr(demo, "_pretrain_and_publish", fake)
    assert demo.pretrain(tmp_path / "backbone", tmp_path / "cache", console=console) == \
        str(tmp_path / "backbone/model.ckpt")
    log_path = tmp_path / "cache/demo" / demo.PRETRAIN_LOG
    line = console.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n"), line
    assert re.fullmatch(rf"Making the demo backbone \({demo.PRETRAIN.steps} steps .*\) in {tmp_path}/backbone \.\.\. "
                        rf"done in \d+ s, source-task val accuracy 0\.990; details in {log_path}\n", line), line
    text = log_path.read_text()
    for said in ("[finetune.pipeline][INFO] - Restore from nothing\n  restored 0", "printed by the job",
                 "written to stderr", "step 2/2: loss 0.500, accuracy 0.500 (last 1 step)"):
        assert said in text, said
    assert root.handlers == handlers  # the console's handlers are back
    assert [path.name for path in log_path.parent.iterdir()] == [demo.PRETRAIN_LOG]  # no temporary left


def test_a_failing_pretraining_says_so_in_its_line_keeps_its_log_and_raises(tmp_path):
    console, log_path = io.StringIO(), tmp_path / "demo" / demo.PRETRAIN_LOG
    with pytest.raises(RuntimeError, match="out of memory"):
        with demo.details_in_log("Making the demo backbone", log_path, console):
            logging.getLogger("finetune.pipeline").info("step 1 went fine")
            raise RuntimeError("out of memory")
    assert re.fullmatch(rf"Making the demo backbone \.\.\. failed after \d+ s; details in {log_path}\n",
                        console.getvalue()), console.getvalue()
    text = log_path.read_text()
    assert "step 1 went fine" in text and "Making the demo backbone failed" in text
    assert "RuntimeError: out of memory" in text  # the traceback, for whoever reads the log
