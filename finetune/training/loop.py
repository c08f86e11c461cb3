"""The training loop: run each phase's train op from the step training starts at to the end of the last
phase, and call the listeners at fixed moments. Everything else a run does while it trains (inputs,
summaries, progress, evaluations, the best checkpoint, early stopping, checkpoints, the run's status,
stop requests, the NaN guard) is a :class:`Listener` (:mod:`finetune.training.listeners`).

The moments, in the order they come (each listener is called in list order at each one):

1. ``phase_started`` when a phase starts, or this process starts inside one;
2. ``fetches`` then ``step_ended`` after each train op (the step's loss, accuracy and extra fetches);
3. ``evaluated`` after an evaluation a listener asked for at this step (:meth:`Loop.request_evaluation`);
4. ``checkpointed`` after a checkpoint one asked for (:meth:`Loop.request_checkpoint`), or that a stop
   request makes; a stop ends the loop there (:meth:`Loop.request_stop`), a stop by a signal with
   :class:`finetune.errors.RunStopped`;
5. ``progress_state`` when a checkpoint is written: what each listener keeps beside it for an exact resume;
6. ``training_ended`` once the last step (or an early stop) is done; ``closed`` always, last.

A test stops or crashes a run at a chosen step with a listener of its own; the loop has no other door.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from finetune.errors import RunStopped
from finetune.training.phases import Phase, phase_at

if TYPE_CHECKING:  # the loop itself needs no TensorFlow: listeners import it without loading it
    from finetune.compat import tf1
    from finetune.training.training_graph import TrainingGraph


@dataclass(frozen=True)
class StepResult:
    """One train op run: the global step it completed (1 for the first), its phase, loss and accuracy, the
    seconds the run took, and what listeners asked to fetch with it."""

    step: int
    phase: int
    loss: float
    accuracy: float
    seconds: float
    fetched: dict[str, Any] = field(default_factory=dict)


class Listener:
    """What the loop calls, at the moments its module docstring lists; every method does nothing here."""

    def fetches(self, loop: "Loop", step: int, phase: int) -> dict[str, Any]:
        """Tensors to run with the train op of global step ``step + 1`` (named; ``StepResult.fetched``)."""
        return {}

    def phase_started(self, loop: "Loop", phase: int, step: int) -> None:
        """Phase ``phase`` is about to train global step ``step + 1``."""

    def step_ended(self, loop: "Loop", result: StepResult) -> None:
        """A train op ran."""

    def evaluated(self, loop: "Loop", step: int, results: dict) -> None:
        """The held-out splits were evaluated at ``step`` (split -> its result)."""

    def checkpointed(self, loop: "Loop", step: int, checkpoint: str) -> None:
        """A checkpoint of ``step`` was written."""

    def progress_state(self) -> dict[str, Any]:
        """What to keep beside a checkpoint so that a resumed run carries on exactly (JSON-ready)."""
        return {}

    def training_ended(self, loop: "Loop", step: int) -> None:
        """The loop trained its last step (or stopped early); not called when it raised."""

    def closed(self, loop: "Loop") -> None:
        """The loop is over, however it ended."""


MOMENTS = ("fetches", "phase_started", "step_ended", "evaluated", "checkpointed", "training_ended", "closed")


@dataclass
class StopRequest:
    reason: str  # said in the log: "early stopping", "SIGUSR1", ...
    signal: Optional[str] = None  # set: the run stops with RunStopped (exit 75), resumable


class Loop:
    """One training session's loop. ``evaluate(sess, step)`` evaluates every held-out split;
    ``save(sess, step, progress)`` writes a checkpoint and returns its prefix."""

    def __init__(self, sess: tf1.Session, model: TrainingGraph, listeners: Sequence[Listener],
                 evaluate: Callable[[tf1.Session, int], dict], save: Callable[[tf1.Session, int, dict], str]) -> None:
        self.sess, self.model, self.listeners = sess, model, list(listeners)
        # Each moment's methods, in the listeners' order, without the ones that do nothing: a step calls them
        # for every listener, a few hundred times a second.
        self._hooks = {moment: [method for listener in self.listeners
                                for method in [getattr(listener, moment)]
                                if getattr(method, "__func__", None) is not getattr(Listener, moment)]
                       for moment in MOMENTS}
        self._evaluate, self._save = evaluate, save
        # A step's fetches made into a session callable once per phase and set of listener fetches: running
        # one is about a quarter of a millisecond faster than ``sess.run`` sorting out the same fetches anew,
        # and a short step is a few milliseconds.
        self._step_runs: dict[tuple, Callable[[], dict[str, Any]]] = {}
        self.phases: list[Phase] = [ops.phase for ops in model.phases]
        self.end = self.phases[-1].end
        self.step = int(sess.run(model.global_step))
        self.started_at = self.step  # where this process started
        self._evaluation = self._checkpoint = False
        self.stop: Optional[StopRequest] = None

    # --- what listeners ask for ----------------------------------------------------------------------
    def request_evaluation(self) -> None:
        self._evaluation = True

    def request_checkpoint(self) -> None:
        self._checkpoint = True

    def request_stop(self, reason: str, signal: Optional[str] = None) -> None:
        """End training after this step, with a checkpoint; ``signal``: stopped from outside (RunStopped)."""
        if self.stop is None or (signal and not self.stop.signal):
            self.stop = StopRequest(reason, signal)

    @property
    def phase_ends(self) -> set[int]:
        return {phase.end for phase in self.phases}

    def evaluate(self, step: int) -> dict:
        """Evaluate every held-out split now (in ``self.sess``), and tell the listeners."""
        results = self._evaluate(self.sess, step)
        self._notify("evaluated", step, results)
        return results

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Train to the end of the last phase or a stop request; returns the step reached."""
        try:
            while self.step < self.end and self.stop is None:
                index = phase_at(self.phases, self.step)
                if self.step == self.phases[index].start or self.step == self.started_at:
                    self._notify("phase_started", index, self.step)
                result = self._run_step(index)
                self.step = result.step
                self._notify("step_ended", result)
                self._after_step()
            self._notify("training_ended", self.step)
            return self.step
        finally:
            self._notify("closed")

    def _run_step(self, index: int) -> StepResult:
        ops = self.model.phases[index]
        fetches: dict[str, Any] = {}
        for listener_fetches in self._hooks["fetches"]:
            fetches.update(listener_fetches(self, self.step, index))
        key = (index, *((name, tensor.name) for name, tensor in fetches.items()))
        run = self._step_runs.get(key)
        if run is None:
            run = self._step_runs[key] = self.sess.make_callable(
                {"_": ops.train_op, "loss": ops.loss, "accuracy": ops.accuracy, **fetches})
        started = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - started
        return StepResult(self.step + 1, index, float(out["loss"]), float(out["accuracy"]), seconds,
                          {key: out[key] for key in fetches})

    def _after_step(self) -> None:
        """The evaluation and the checkpoint asked for at this step, in that order (a checkpoint's progress
        includes the evaluation of its step); then a stop."""
        step = self.step
        if self._evaluation:
            self._evaluation = False
            self.evaluate(step)
        if self._checkpoint or self.stop is not None:
            self._checkpoint = False
            progress: dict[str, Any] = {}
            for listener in self.listeners:
                progress.update(listener.progress_state())
            saved = self._save(self.sess, step, progress)
            self._notify("checkpointed", step, saved)
            if self.stop is not None and self.stop.signal:
                raise RunStopped(self.stop.signal, step, saved)

    def _notify(self, moment: str, *args: Any) -> None:
        for hook in self._hooks[moment]:
            hook(self, *args)
