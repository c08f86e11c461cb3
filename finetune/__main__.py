"""``python -m finetune experiment=NAME [key=value ...]``: one finetuning run (``-m`` for a sweep)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import finetune.compat  # noqa: F401  (first: makes TF-Slim work on current TensorFlow)
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from finetune.config import CONFIG_PATH, register_configs
from finetune.errors import FinetuneError

log = logging.getLogger("finetune")

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float:
    from finetune import pipeline

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = pipeline.run(cfg, run_dir)
    except FinetuneError as error:
        log.error("%s", error)
        sys.exit(1)
    print(pipeline.summary_table(metrics, run_dir))
    return metrics["val"]["accuracy"]  # the sweep objective


if __name__ == "__main__":
    main()
