"""The files of a run directory, by name: one place for what the pipeline writes and every tool reads back
(no TensorFlow: the launchers, ``tools runs`` and ``tools summarize`` read them before any model loads)."""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
METRICS_FILE = "metrics.json"  # the same bytes for two runs of one config, resumed or not
TIMINGS_FILE = "timings.json"  # what differs between runs of one config: speed, where this process resumed
HISTORY_FILE = "metrics.jsonl"  # one line per evaluation: its step and each split's numbers
PHASES_FILE = "phases.json"  # what each phase trains, and how
CONFUSION_FILE = "confusion_matrix.json"  # of the final evaluation
MISCLASSIFIED_FILE = "misclassified.json"  # of the final evaluation
BAD_FILES_FILE = "bad_files.json"  # the files the data source skipped, and why
SPLITS_FILE = "splits.json"  # the classes and each split's examples: what the run was trained and evaluated on
PREDICTIONS_FILE = "predictions.jsonl"  # the final evaluation, one line per example: recompute any statistic
RUN_RECORD_FILE = "run.json"  # the run's record: config, fingerprint, versions, data, phases, each start
STATUS_FILE = "status.json"  # the run's state for launchers and tools (finetune.run_status)
CHECKPOINT_DIR = "checkpoints"  # the run's own checkpoints
FINGERPRINT_FILE = "fingerprint.json"  # in CHECKPOINT_DIR: the config the checkpoints were written under
