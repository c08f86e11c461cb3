"""The whole run, in the order of the mission: data, graph, restore plan, restore, train, evaluate, freeze.

Each step takes the slice of the config it needs and returns what it made. Everything the run
produces lands in ``run_dir``: checkpoints, TensorBoard events, restore report, phases, metrics (the
final ones, one line per evaluation, the confusion matrices and misclassified images), export.
A full disk stops the run with one message (:func:`finetune.errors.disk_full_error`); the last
complete checkpoint stays, and the same command resumes from it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from finetune import graphs
from finetune.compat import tf, tf1
from finetune.config import DataConfig, exports
from finetune.data.features import cache_secret
from finetune.data.examples import LabelledImages
from finetune.data.sources import open_source
from finetune.errors import ResumableError, RunStopped, disk_full, disk_full_error
from finetune.export.exporter import export_model
from finetune.files import remove_orphaned_temporaries, write_json_atomically, write_text_atomically
from finetune.run_files import (BAD_FILES_FILE, CONFUSION_FILE, HISTORY_FILE, METRICS_FILE, MISCLASSIFIED_FILE,
                                PHASES_FILE, PREDICTIONS_FILE, SPLITS_FILE, TIMINGS_FILE)
from finetune.training.averages import evaluation_weights, start_averages
from finetune.training.data_identity import check_same_data
from finetune.training.devices import Device, choose_device, gpu_record, op_determinism, session_config
from finetune.training.evaluate import (EvaluationHistory, SplitResult, confusion_report, evaluate_all, evaluate_tta,
                                        misclassified_report, prediction_lines, split_metrics)
from finetune.training.listeners import (CheckpointSchedule, EvaluationSchedule, KeepBest, NanGuard, Progress,
                                         StartInputs, StopOnSignal, Summaries, Timings, TrainingWindow)
from finetune.training.loop import Listener, Loop
from finetune.training.optimizers import phase_summary
from finetune.training.phase_inputs import PhaseInputs
from finetune.training.phases import planned_steps
from finetune.training.run_graph import RunGraph
from finetune.training.run_record import start_entry, write_run_record
from finetune.training.run_state import CHECKPOINT_DIR, RunState, Start, checkpoint_step
from finetune.training.shared_graph import run_graph, run_session
from finetune.training.training_graph import TrainingGraph
from finetune.validate import validate
from finetune.weights.restore import (RestorePlan, apply_restore, format_report, summarize, untouched_backbone_warning,
                                      verify_restored)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RunInputs:
    """What the config's specs resolve to (:func:`finetune.resolve.resolve`): the data folder and the file
    or prefix of the pretrained weights (None: nothing is restored)."""

    data_root: Path
    checkpoint: Optional[str]


def load_data(data_cfg: DataConfig, root: Path) -> LabelledImages:
    """The data ``data.name`` names at ``root``. Bad files are skipped and logged (bad_files.json lists them)."""
    data = open_source(data_cfg, root)
    log.info("Data: %s", data.summary())
    if data.bad:
        log.warning("Skipped %d file(s) that cannot be trained on (e.g. %s: %s); bad_files.json in the run directory "
                    "lists them all.", len(data.bad), data.bad[0].key, data.bad[0].reason)
    if data.duplicates:
        log.warning("Left out %d path(s) naming a file listed already (e.g. %s, the same file as %s): each file is one "
                    "example. bad_files.json lists them under 'duplicates'.", len(data.duplicates),
                    data.duplicates[0].key, data.duplicates[0].same_as)
    return data


def run(cfg: DictConfig, run_dir: str | Path, inputs: RunInputs, listeners: Sequence[Listener] = ()) -> dict:
    """Finetune as ``cfg`` says, on ``inputs`` (its specs resolved: :func:`finetune.resolve.resolve`); write
    everything to ``run_dir``; return the metrics. ``listeners`` join the training loop's own, before them
    (:mod:`finetune.training.loop`): the command line's status.json, a test's stop at a chosen step.

    The run directory is locked for this process. A finished run (its last checkpoint and metrics.json
    there, written under the same config) is reported and left untouched; a checkpoint that cannot be
    resumed (another config, ``resume=never``) stops the run before anything is written."""
    validate(cfg)
    run_dir = Path(run_dir)
    state = RunState(run_dir, cfg)
    state.lock()
    ended = "failed"  # what the .lock says once it is let go
    try:
        metrics = _run_locked(cfg, state, inputs, listeners)
        ended = "finished"
        return metrics
    except RunStopped:
        ended = "stopped"
        raise
    except Exception as error:
        if not disk_full(error):
            raise
        remove_orphaned_temporaries(run_dir, CHECKPOINT_DIR)  # what the failed write left half-written
        raise disk_full_error(error, str(run_dir), state.latest()) from None
    finally:
        state.release(ended)


def _run_locked(cfg: DictConfig, state: RunState, inputs: RunInputs, listeners: Sequence[Listener]) -> dict:
    """:func:`run` once the run directory is locked."""
    run_dir = state.run_dir
    remove_orphaned_temporaries(run_dir, CHECKPOINT_DIR)  # what a killed earlier process left half-written
    latest = state.check_resumable()
    data, steps = None, cfg.train.steps
    if latest is not None and cfg.train.epochs is not None:  # the run's length depends on the training split
        data = load_data(cfg.data, inputs.data_root)
        steps = planned_steps(cfg.train, len(data.examples["train"]), cfg.data.batch_size)
    finished = finished_metrics(run_dir, latest, steps)
    if finished is not None:
        log.info("This run finished already (%s, step %d) in %s; nothing to do. Start a new run directory "
                 "(hydra.run.dir=...) to train again.", Path(latest).name, checkpoint_step(latest), run_dir)
        return finished
    device = choose_device(cfg.train)
    if data is None:
        data = load_data(cfg.data, inputs.data_root)
    # Resuming on other classes or examples than the run was trained on: refused before anything is written.
    data_change = check_same_data(run_dir / SPLITS_FILE, data, cfg.resume) if latest is not None else None
    with op_determinism(cfg.train.deterministic):  # same config, same numbers
        metrics = _train_and_export(cfg, state, data, inputs.checkpoint, device, listeners, data_change)
    write_json_atomically(run_dir / TIMINGS_FILE, metrics["timings"])
    # Last: a metrics.json at the latest checkpoint's step is what marks a run finished.
    write_json_atomically(run_dir / METRICS_FILE, {key: value for key, value in metrics.items() if key != "timings"})
    return metrics


def finished_metrics(run_dir: Path, latest: Optional[str], steps: Optional[int]) -> Optional[dict]:
    """metrics.json of a finished run, else None. Finished: metrics.json was written at the latest
    checkpoint's step, and that step reaches ``steps``, the run's length (null: the phases' end, fixed by the
    fingerprint), or early stopping ended the run there."""
    path = run_dir / METRICS_FILE
    if latest is None or not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    step = checkpoint_step(latest)
    stopped = (metrics.get("early_stopping") or {}).get("stopped_at_step")
    if metrics.get("steps") != step or not (steps is None or step >= steps or stopped == step):
        return None
    return metrics


def _restore_as_planned(sess: tf1.Session, run: RunGraph, seed: int) -> None:
    """The planned restore of the pretrained weights, every restored tensor checked against the source; what
    is not restored is initialised from ``seed`` (``train.seed``)."""
    apply_restore(sess, run.restore, seed)
    mismatched = verify_restored(sess, run.plan, run.model.model_variables)
    if mismatched:
        raise RuntimeError(f"restored values differ from the checkpoint for {mismatched[:5]}")


_MODEL_GRAPHS: "weakref.WeakKeyDictionary[tf.Graph, tf.Graph]" = weakref.WeakKeyDictionary()


def model_graph(model: TrainingGraph) -> tf.Graph:
    """The deployable path alone (``input`` -> backbone -> head -> ``logits``, ``probabilities``), for
    TensorBoard's Graphs dashboard: the whole training graph, three towers sharing one set of variables,
    draws the shared head as detached "auxiliary" nodes. Made once per run graph (a sweep's jobs share one)."""
    graph = model.export.logits.graph
    if graph not in _MODEL_GRAPHS:
        outputs = [model.export.logits.op.name, model.export.probabilities.op.name]
        graph_def = graph.as_graph_def(add_shapes=True)
        _MODEL_GRAPHS[graph] = graphs.import_graph(tf1.graph_util.extract_sub_graph(graph_def, outputs))
    return _MODEL_GRAPHS[graph]


def _restore_outcome(state: RunState, start: Start, plan: RestorePlan, checkpoint: Optional[str]) -> dict:
    """metrics.json's ``restore`` section as the fresh start found it: kept in the run's checkpoint folder
    then, and read back by a resumed run (whose own start restored nothing), so that both report the same."""
    saved = state.saved_restore_outcome() if start.resumed else None
    if saved is not None:
        return saved
    outcome = {"checkpoint": checkpoint, "restored": len(plan.restore), "initialised": len(plan.initialise),
               "trained": len(plan.trained),
               # None when resumed: a checkpoint of an older version, which kept no outcome.
               "verified_bit_identical": None if start.resumed else (bool(plan.restore) or None)}
    if not start.resumed:
        state.save_restore_outcome(outcome)
    return outcome


# evaluate_all with the run's graph, data and k: (session, splits) -> results per split
Measure = Callable[[tf1.Session, Sequence[str]], dict[str, SplitResult]]
VALIDATION = ("val",)  # what evaluations during training measure: the test split never guides training


def _evaluate(sess: tf1.Session, step: int, model: TrainingGraph, state: RunState, measure: Measure) -> dict:
    """The validation split, evaluated with the evaluation weights (the moving averages, if any)."""
    _check_weights(sess, model, step, state)  # non-finite weights would evaluate to numbers JSON cannot hold
    with evaluation_weights(sess, model.averages):
        return measure(sess, VALIDATION)


def _save(sess: tf1.Session, step: int, progress: dict, model: TrainingGraph, state: RunState) -> str:
    """A checkpoint of ``step`` with its progress; never of weights that are not finite numbers."""
    _check_weights(sess, model, step, state)
    return state.save(sess, step, progress)


def _check_weights(sess: tf1.Session, model: TrainingGraph, step: int, state: RunState) -> None:
    """A weight that is not a finite number stops the run, keeping the last good checkpoint."""
    if not sess.run(model.weights_finite):
        raise ResumableError(
            f"A weight became NaN or infinite by step {step}; the run stopped there without saving it and kept its "
            f"last good checkpoint ({state.latest() or 'none yet'}). Likely causes: a learning rate too high "
            "(optimizer.learning_rate, or a phase's) or no gradient clipping (optimizer.clip_gradient_norm).")


def _final_evaluation(loop: Loop, cfg: DictConfig, state: RunState, history: EvaluationHistory,
                      step: int, measure: Measure) -> tuple[dict[str, SplitResult], Optional[dict]]:
    """The evaluation metrics.json reports: of the final weights, or with ``train.keep_best`` of the best
    checkpoint, which this loads into the session (so the export is the best model too). The test split is
    evaluated here, once, on those weights: evaluations during training measure validation only, so nothing
    that steers a run (keep_best, early stopping, a user watching) ever sees test numbers. Returns the results
    per split and the best checkpoint's record (None without keep_best)."""
    sess, model = loop.sess, loop.model
    if history.last is not None and history.last[0] == step:  # the loop evaluated the final step
        results = dict(history.last[1])
    elif step in history.steps:  # a resumed run with nothing left to train: evaluated before, not recorded again
        with evaluation_weights(sess, model.averages):
            results = measure(sess, VALIDATION)
    else:
        results = dict(loop.evaluate(step))
    best = None
    if cfg.train.keep_best is not None:
        best = state.best()
        if best["step"] != step:
            log.info("Loading the best checkpoint (%s %.4g at step %d) for the final evaluation and export.",
                     best["metric"], best["value"], best["step"])
            state.restore_best(sess)
            with evaluation_weights(sess, model.averages):
                results = measure(sess, VALIDATION)
    held_out = [split for split in model.held_out_splits if split not in results]
    if held_out:
        with evaluation_weights(sess, model.averages):
            results.update(measure(sess, held_out))
    return results, best


def _tta_evaluation(sess: tf1.Session, model: TrainingGraph, splits: Sequence[str],
                    top_k: int) -> Optional[dict[str, SplitResult]]:
    """With eval.tta: ``splits`` through the TTA tower, on the weights the final evaluation measured (None
    without eval.tta). Always over images, also where the plain pass read cached features."""
    if model.tta is None:
        return None
    with evaluation_weights(sess, model.averages):
        results = evaluate_tta(sess, splits, model, top_k)
    log.info("Test-time augmentation over %d views (%s): %s.", len(model.tta.views), ", ".join(model.tta.views),
             ", ".join(f"{split} accuracy {result.accuracy:.4f}" for split, result in results.items()))
    return results


def _start(sess: tf1.Session, run: RunGraph, cfg: DictConfig, state: RunState, data: LabelledImages,
           checkpoint: Optional[str], device: Device, data_change: Optional[dict]) -> tuple[Start, dict]:
    """Resume or restore (:meth:`RunState.start`), then write what the run starts from: its config, the
    bad files, the splits, the restore report, the phases and run.json (its entry for this start holds
    ``data_change``, the changed data a resume accepted). Returns the start and metrics.json's ``restore``
    section."""
    run_dir, model, plan = state.run_dir, run.model, run.plan
    start = state.start(sess, run.savers, lambda: _restore_as_planned(sess, run, cfg.train.seed),
                        cfg.restore.checkpoint)
    # Once data, graph and weights are found good: a run refused for bad input leaves the directory as it was.
    write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json_atomically(run_dir / BAD_FILES_FILE, data.bad_files_report())
    write_json_atomically(run_dir / SPLITS_FILE, data.splits_record())
    if not start.resumed:
        start_averages(sess, model.averages)
    restore = _restore_outcome(state, start, plan, checkpoint)
    verified = None if start.resumed else restore["verified_bit_identical"]
    write_text_atomically(run_dir / "restore_report.txt", f"{start.why}\n\n{format_report(plan, verified)}")
    phases = [phase_summary(ops, model.model_variables) for ops in model.phases]
    write_json_atomically(run_dir / PHASES_FILE, phases)
    write_run_record(run_dir, cfg, fingerprint=state.fingerprint, pretrained=checkpoint, data=data, phases=phases,
                     start=start_entry(start.step, start.why, data_change), gpu=gpu_record(device),
                     class_weights=model.class_weights)
    return start, restore


def _train_and_export(cfg: DictConfig, state: RunState, data: LabelledImages, checkpoint: Optional[str],
                      device: Device, listeners: Sequence[Listener], data_change: Optional[dict]) -> dict:
    run = run_graph(cfg, data, checkpoint, device)  # the previous job's, when only the seed or fold differ
    model, plan, run_dir = run.model, run.plan, state.run_dir
    log.info(summarize(plan, warn=False))
    warning = untouched_backbone_warning(plan)
    if warning:
        log.warning(warning)
    if model.features is not None:  # a phase trains from the feature cache: refuse a secret others can read now,
        cache_secret(cfg.paths.cache_dir)  # before anything is written to the run directory
    with contextlib.ExitStack() as sessions:
        sess = sessions.enter_context(run_session(run, cfg, device))
        start, restore = _start(sess, run, cfg, state, data, checkpoint, device, data_change)
        writer = sessions.enter_context(contextlib.closing(
            tf1.summary.FileWriter(str(run_dir / "tensorboard"), model_graph(model))))
        history = EvaluationHistory(run_dir / HISTORY_FILE, cfg.train, start.step, start.progress)
        window = TrainingWindow(cfg.train, start.progress)
        timings = Timings(cfg.data.batch_size, math.ceil(len(data.examples["train"]) / cfg.data.batch_size))
        inputs = PhaseInputs(model, data, cfg.paths.cache_dir)
        measure = functools.partial(evaluate_all, graph=model, top_k=cfg.train.top_k, data=data,
                                    held_out_features=inputs.features, batch_size=cfg.data.eval_batch_size)
        loop = Loop(sess, model, [
            *listeners, NanGuard(state), StartInputs(inputs),
            Summaries(run.summaries, writer, cfg.train, data.class_names), Progress(cfg.train, cfg.data.batch_size),
            window, timings,
            EvaluationSchedule(cfg.train.eval_every, len(data.examples["train"]), cfg.data.batch_size),
            KeepBest(history, state),
            CheckpointSchedule(cfg.train.checkpoint_every), StopOnSignal(state),
        ], evaluate=functools.partial(_evaluate, model=model, state=state, measure=measure),
            save=functools.partial(_save, model=model, state=state))
        with state.stop_on_signals():
            loop.run()
        frozen_names = [name for name in plan.restore if name not in set(plan.trained)]
        changed = verify_restored(sess, plan, model.model_variables, frozen_names)
        if changed:
            log.warning("%d restored, untrained variables changed during training (e.g. %s): BatchNorm moving "
                        "statistics update when backbone.batch_norm_training is true.", len(changed), changed[0])
        latest = state.latest()
        step = checkpoint_step(latest)
        if cfg.train.mixed_precision:  # evaluate and export in float32: a session without the rewrite
            float32 = session_config(device, deterministic=cfg.train.deterministic)
            loop.sess = sess = sessions.enter_context(tf1.Session(graph=run.graph, config=float32))
            run.savers.latest.restore(sess, latest)
        results, best = _final_evaluation(loop, cfg, state, history, step, measure)
        tta = _tta_evaluation(sess, model, list(results), cfg.train.top_k)
        writer.close()
        views = model.tta.views if model.tta is not None else ()
        metrics = {
            "train": window.metrics(),
            **{split: split_metrics(result, data.class_names, (tta or {}).get(split), views)
               for split, result in results.items()},
            "steps": step,
            "restore": {**restore, "frozen_variables_unchanged": not changed},
            "checkpoint": str(Path(latest).relative_to(run_dir)),
            "timings": {**timings.timings(), "resumed_from_step": start.step if start.resumed else None},
        }
        if best is not None:
            metrics["best"] = best
        if history.early_stopping_metrics() is not None:
            metrics["early_stopping"] = history.early_stopping_metrics()
        write_json_atomically(run_dir / CONFUSION_FILE, confusion_report(results, data.class_names))
        write_json_atomically(run_dir / MISCLASSIFIED_FILE, misclassified_report(results, data.class_names))
        write_text_atomically(run_dir / PREDICTIONS_FILE, prediction_lines(results, data.class_names, tta))
        if exports(cfg):
            with evaluation_weights(sess, model.averages):
                metrics["export"] = export_model(sess, model.export, data, cfg.backbone, run_dir / "export",
                                                 cfg.export, cfg.allow_unsafe_ops, seed=cfg.train.seed,
                                                 tta=model.tta if cfg.export.tta else None)
    return metrics


def train_row_label(train: dict) -> str:
    """The end-of-run table's train row: the steps its numbers average, the window of the last progress line
    and of the bar (``train.log_every`` steps, fewer when fewer were trained)."""
    count = train.get("last_steps")
    if not count:  # a metrics.json written before the count was recorded, or nothing trained
        return "train (last steps)"
    return f"train (last {count} step{'s' if count != 1 else ''})"


def summary_table(metrics: dict, run_dir: Path) -> str:
    """The few lines printed at the end of a run."""
    def number(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [(train_row_label(metrics["train"]), metrics["train"])]
    rows += [(s, metrics[s]) for s in ("val", "test") if s in metrics]
    rows += [(f"{s} (TTA)", metrics[s]["tta"]) for s in ("val", "test") if "tta" in metrics.get(s, {})]
    lines = [f"{'split':<24}{'accuracy':>10}{'loss':>10}"]
    lines += [f"{name:<24}{number(m['accuracy']):>10}{number(m['loss']):>10}" for name, m in rows]
    speed = metrics.get("timings", {}).get("images_per_second")
    lines.append(f"{metrics['steps']} steps" + (f", {speed:.0f} images/s" if speed else ""))
    stopped = (metrics.get("early_stopping") or {}).get("stopped_at_step")
    if stopped is not None:
        lines.append(f"stopped early at step {stopped}: {metrics['early_stopping']['metric']} last improved at step "
                     f"{metrics['early_stopping']['best_step']}")
    if "best" in metrics:
        best = metrics["best"]
        lines.append(f"best: {best['metric']} {best['value']:.3f} at step {best['step']} ({best['checkpoint']}); "
                     "val, test and the export are of it")
    if "export" in metrics:
        worst = max(metrics["export"]["parity"].values())
        lines.append(f"frozen graph: {metrics['export']['frozen_graph']} (max |session - frozen| = {worst:.1e})")
        quantized = metrics["export"].get("tflite_quantization")
        if quantized:
            both = quantized["accuracy"]["val+test"]
            lines.append(f"{quantized['mode']} TFLite: accuracy {number(both['quantized'])} "
                         f"(float {number(both['float'])})"
                         f" on val+test, {quantized['drop_images']} image(s) lost")
        for name, why in metrics["export"].get("format_errors", {}).items():
            lines.append(f"no {name} export: {why}")
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)
