"""Export: freeze the export tower of the training session and prove the file computes the same thing.

The frozen graph holds only the subgraph of ``logits`` and ``probabilities``, devices cleared, a
dynamic batch dimension, and the backbone's normalisation: it takes float RGB pixels in [0, 255].
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from finetune import graph_tools
from finetune.compat import tf1
from finetune.config import ExportConfig
from finetune.errors import FinetuneError
from finetune.model import INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME, Tower

log = logging.getLogger(__name__)

OUTPUTS = (LOGITS_NAME, PROBABILITIES_NAME)


def export_frozen(sess: tf1.Session, export: Tower, class_names: list[str], batch: np.ndarray, export_dir: Path,
                  export_cfg: ExportConfig) -> dict:
    """Write ``frozen_graph.pb`` and ``labels.txt``; return the parity of frozen vs session on ``batch``."""
    export_dir.mkdir(parents=True, exist_ok=True)
    frozen = graph_tools.freeze_session(sess, list(OUTPUTS))
    pb_path = export_dir / "frozen_graph.pb"
    pb_path.write_bytes(frozen.SerializeToString())
    (export_dir / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))

    session_outputs = sess.run([export.logits, export.probabilities], {export.pixels: batch})
    frozen_outputs = graph_tools.run_graph_def(frozen, {f"{INPUT_NAME}:0": batch}, [f"{n}:0" for n in OUTPUTS])
    parity = {f"{name}_max_abs_diff": graph_tools.max_abs_diff(a, b)
              for name, a, b in zip(OUTPUTS, session_outputs, frozen_outputs)}
    log.info("Froze %d nodes to %s; parity on %d validation images: %s",
             len(frozen.node), pb_path, len(batch), ", ".join(f"{k} {v:.2e}" for k, v in parity.items()))
    worst = max(parity.values())
    if worst > export_cfg.parity_tolerance:
        raise FinetuneError(
            f"The frozen graph {pb_path} differs from the training session by {worst:.3e} on a validation batch, "
            f"more than export.parity_tolerance={export_cfg.parity_tolerance}. The file is kept for inspection; "
            "do not deploy it."
        )
    return {"frozen_graph": str(pb_path), "parity": parity, "parity_images": int(len(batch))}
