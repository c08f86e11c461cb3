"""Check the GPU path: the shipped two-phase experiment on a GPU, with and without mixed precision, twice each.

    python scripts/gpu_check.py [--device gpu|cpu|auto] [--out DIR] [-- OVERRIDES...]

Each of the four runs is ``python -m finetune experiment=mobilenet_two_phase train.device=DEVICE
train.mixed_precision=...`` in a fresh run directory (a process of its own, as a user runs it). The
check passes when every run trains (finite losses, the configured steps), and the two repeats of each
variant are bit-identical: the same final checkpoint tensors and byte-identical ``metrics.json``
(``train.deterministic`` is on by default). It prints a table with each variant's accuracy and images
per second (training steps, from ``timings.json``) and exits 1 when a check fails, 2 when a run fails.

``--device gpu`` (the default) makes a run stop with one message when TensorFlow sees no GPU, so the
script fails there rather than timing the CPU; ``--device cpu`` runs the same checks on the CPU (to
try the script itself). Overrides after ``--`` go to every run (e.g. ``train.phases.0.steps=50``).
The demo assets are made by the first run in the cache (FINETUNE_CACHE, else ~/.cache/finetune).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "experiment=mobilenet_two_phase"


def train(run_dir: Path, device: str, mixed_precision: bool, overrides: list[str]) -> dict:
    """One run in its own process; its metrics.json, timings.json and final checkpoint's tensors."""
    command = [sys.executable, "-m", "finetune", EXPERIMENT, f"train.device={device}",
               f"train.mixed_precision={str(mixed_precision).lower()}", f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
        sys.exit(f"the run failed (exit {result.returncode}): {' '.join(command)}")
    import finetune.compat  # noqa: F401  (first: TF-Slim's shim)
    from finetune.weights.readers import read_checkpoint

    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"metrics_bytes": (run_dir / "metrics.json").read_bytes(), "metrics": metrics,
            "timings": json.loads((run_dir / "timings.json").read_text()),
            "tensors": read_checkpoint(str(run_dir / metrics["checkpoint"])),
            "devices": json.loads((run_dir / "run.json").read_text()).get("gpu")}


def identical(first: dict, second: dict) -> list[str]:
    """What differs between two repeats (nothing: [])."""
    differ = [] if first["metrics_bytes"] == second["metrics_bytes"] else ["metrics.json"]
    differ += [name for name in sorted(first["tensors"])
               if name not in second["tensors"] or not np.array_equal(first["tensors"][name], second["tensors"][name])]
    return differ


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["gpu", "cpu", "auto"], default="gpu", help="train.device of every run")
    parser.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary folder)")
    args, overrides = parser.parse_known_args(argv)
    overrides = [value for value in overrides if value != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix="finetune-gpu-check-"))
    rows, failures = [], []
    for mixed in (False, True):
        variant = "mixed precision" if mixed else "float32"
        repeats = [train(out / f"{variant.replace(' ', '_')}_{n}", args.device, mixed, overrides) for n in (1, 2)]
        metrics = repeats[0]["metrics"]
        if not all(math.isfinite(r["metrics"]["train"]["loss"]) for r in repeats):
            failures.append(f"{variant}: a training loss is not finite")
        differ = identical(*repeats)
        if differ:
            failures.append(f"{variant}: the repeats differ in {', '.join(differ[:5])}")
        speeds = [r["timings"]["images_per_second"] for r in repeats]
        rows.append(f"| {variant} | {metrics['steps']} | {metrics['val']['accuracy']:.3f} | "
                    f"{metrics['test']['accuracy']:.3f} | {'yes' if not differ else 'NO'} | "
                    f"{speeds[0]:.0f}, {speeds[1]:.0f} |")
    gpu = repeats[0]["devices"]
    print(f"\n{EXPERIMENT}, train.device={args.device}; GPU: {json.dumps(gpu) if gpu else 'none'}; runs in {out}\n")
    print("| variant | steps | val accuracy | test accuracy | repeats bit-identical | images/s (train op) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
