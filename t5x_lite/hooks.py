"""The training loop and the hooks it calls after every step (Levanter's `TrainerHooks` shape).

The loop only steps; everything else a run does between steps is a hook: step timing, the
non-finite policy, metrics, evaluation, checkpoints, and the preemption signals that end the loop.
Each step, every hook is asked `due(loop)`; a due hook that `syncs` reads the step's results on
the host, so the non-finite check runs on that step first instead of one step late.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax

from t5x_lite import gin_utils, progress


@dataclasses.dataclass
class Loop:
  """What the hooks see and share: the step just taken, its state and (device) metrics."""
  step: int
  state: Any
  train_steps: int
  start_step: int = 0
  metrics: Any = None
  stopping: bool = False   # a signal asked the run to save and stop after this step
  stop_reason: str | None = None  # that signal's name, once the run has stopped for it
  failed: bool = False     # a hook raised the run's error line
  sync: bool = False       # a due hook reads this step's results on the host
  skipped: int = 0         # steps whose non-finite update was skipped
  logged: dict = dataclasses.field(default_factory=dict)  # the last logged metrics

  @property
  def final(self) -> bool:
    return self.step == self.train_steps


class Hook:
  """One concern of the run between steps. Hooks are context managers for the loop's duration."""
  syncs = False  # when due, it needs this step's results on the host

  def due(self, loop: Loop) -> bool:
    del loop
    return True

  def stop_requested(self, loop: Loop) -> bool:
    del loop
    return False

  def __call__(self, loop: Loop) -> None:
    pass

  def close(self, loop: Loop) -> None:
    """After the last step (or before an error line): flush what the hook holds."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def run(loop: Loop, next_batch: Callable[[], Any], step_fn: Callable,
        hooks: Sequence[Hook]) -> Loop:
  """Steps until TRAIN_STEPS or a stop request, calling the due hooks after each step."""
  with contextlib.ExitStack() as stack:
    for hook in hooks:
      stack.enter_context(hook)
    try:
      while loop.step < loop.train_steps and not loop.stopping:
        loop.state, loop.metrics = step_fn(loop.state, next_batch())
        loop.step += 1
        loop.stopping = any([h.stop_requested(loop) for h in hooks])
        due = [h for h in hooks if h.due(loop)]
        loop.sync = any(h.syncs for h in due)
        for hook in due:
          hook(loop)
    except gin_utils.UsageError:
      loop.failed = True
      for hook in hooks:  # the error line is the news: close what can be closed
        with contextlib.suppress(Exception):
          hook.close(loop)
      raise
    for hook in hooks:
      hook.close(loop)
  return loop


class Periodic(Hook):
  """Due every `period` steps and at the last one (period 0: never); reads the step's results."""
  syncs = True

  def __init__(self, period: int):
    self.period = period

  def due(self, loop):
    return bool(self.period) and (loop.step % self.period == 0 or loop.final)


class Timing(Hook):
  """Starts the step timer once the first step (which compiles) has finished, and says so."""

  def __init__(self, log: Callable[[str], None]):
    self.timer = progress.StepTimer()
    self._log = log
    self._t0 = time.perf_counter()

  def __call__(self, loop):
    if loop.step == loop.start_step + 1:
      jax.block_until_ready(loop.metrics)  # the first step includes compilation: time from here
      self.timer.start()
      self._log(f'step {loop.step} (compiled in {time.perf_counter() - self._t0:.1f}s)')
    else:
      self.timer.tick()


class NonFinite(Hook):
  """The step function never applies a non-finite update; this hook stops the run ('stop') or
  counts the step ('skip'). It reads each step's flag one step late, so the host never waits on
  the device, except on steps where another hook reads the results anyway."""

  def __init__(self, policy: str, schedule: Callable, last_good_step: Callable[[], int | None],
               checkpoint_dir: str, log: Callable[[str], None]):
    """`last_good_step()` is asked only when the run stops: it must first let a save still in
    flight commit, so that the error line names the newest step a rerun resumes from."""
    self.policy = policy
    self._schedule = schedule
    self._last_good_step = last_good_step
    self._checkpoint_dir = checkpoint_dir
    self._log = log
    self._unchecked = None

  def __call__(self, loop):
    if self._unchecked:
      self._check(loop, *self._unchecked)
    self._unchecked = (loop.step, loop.metrics)
    if loop.sync:
      self._check(loop, *self._unchecked)
      self._unchecked = None

  def _check(self, loop, step, metrics):
    if bool(jax.device_get(metrics['finite'])):
      return
    loss, gnorm = (float(x) for x in jax.device_get((metrics['loss'], metrics['grad_norm'])))
    what = f'loss {loss}, grad norm {gnorm}, learning rate {float(self._schedule(step - 1)):.3g}'
    if math.isfinite(loss) and math.isfinite(gnorm):
      what += ' (the update is not finite)'
    if self.policy == 'skip':
      loop.skipped += 1
      self._log(f'WARNING: step {step}: {what}; update skipped ({loop.skipped} skipped so far)')
      return
    good = self._last_good_step()
    raise gin_utils.UsageError(
        f'{what} at step {step}: training stopped before applying it. '
        + (f'The last good checkpoint is step {good} in {self._checkpoint_dir}. '
           if good is not None else 'No checkpoint has been saved yet. ')
        + 'Lower the learning rate (check learning_rate_schedule) or clip gradients '
        '(--gin.make_optimizer.grad_clip_norm=1.0), or skip such steps with '
        "--gin.train.on_nonfinite='skip'; then rerun the same command to resume.")


class Metrics(Periodic):
  """Loss, accuracy, learning rate, throughput (`rates(seconds per step)`: steps/s, tokens/s,
  MFU) and the ETA, to the writer."""

  def __init__(self, period: int, writer: progress.MetricsWriter, timer: progress.StepTimer,
               schedule: Callable, rates: Callable[[float], dict], count_skipped: bool):
    super().__init__(period)
    self.writer, self._timer, self._schedule = writer, timer, schedule
    self._rates, self._count_skipped = rates, count_skipped

  def __call__(self, loop):
    s_per_step, n = self._timer.rate()
    row = {k: float(v) for k, v in jax.device_get(loop.metrics).items()}
    row['learning_rate'] = float(self._schedule(loop.step - 1))
    if n:
      row.update(self._rates(s_per_step))
    if self._count_skipped:
      row['skipped_steps'] = loop.skipped
    loop.logged = row
    self.writer.write(loop.step, row, (loop.train_steps - loop.step) * s_per_step if n else None)

  def close(self, loop):
    self.writer.close()


class Evaluation(Periodic):
  """The task's metrics on its validation split (t5x_lite.eval) for `model(loop)`, written beside
  the training rows. The evaluator is made on first use; `make()` returns a falsy value (having
  said why) when there is nothing to evaluate."""

  def __init__(self, period: int, make: Callable[[], Any], model: Callable[[Loop], Any],
               writer: progress.MetricsWriter):
    super().__init__(period)
    self._make, self._model, self._writer = make, model, writer
    self._evaluator = None

  def __call__(self, loop):
    if self._evaluator is None:
      self._evaluator = self._make()
    if self._evaluator:
      self._writer.write(loop.step, self._evaluator.evaluate(self._model(loop)))


class Checkpoint(Periodic):
  """`save(loop)`, also when a signal asks; on close, `close()` waits for the last save to
  commit."""

  def __init__(self, period: int, save: Callable[[Loop], None], close: Callable[[], None]):
    super().__init__(period)
    self._save, self._close = save, close

  def due(self, loop):
    return super().due(loop) or loop.stopping

  def __call__(self, loop):
    self._save(loop)

  def close(self, loop):
    self._close()


class Preemption(Hook):
  """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to save and stop after the current step.

  The handlers stay installed until the last checkpoint is committed, and a repeated signal never
  cuts a save: while one is in flight (`saving()`) it is only acknowledged. A second Ctrl-C with no
  save in flight interrupts at once (the last committed checkpoint stays). Multi-process jobs use
  JAX's preemption service instead, which agrees on one step across hosts.
  """

  def __init__(self, saving: Callable[[], bool] = lambda: False):
    self.signal_name = None
    self._saving = saving
    self._previous = {}

  def due(self, loop):
    return False

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signal_name is None:
      self.signal_name = name
      _say(f'{name} received: finishing step and saving a checkpoint ...')
    elif self._saving():
      _say(f'{name} received again: a checkpoint is being committed; exiting when it is.')
    elif signum == signal.SIGINT:
      raise KeyboardInterrupt
    else:
      _say(f'{name} received again: stopping after this step.')

  def stop_requested(self, loop):
    if jax.process_count() > 1:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        if multihost_utils.reached_preemption_sync_point(loop.step):
          self.signal_name = 'preemption notice'
      except (RuntimeError, AttributeError):
        pass
    return self.signal_name is not None

  def close(self, loop):
    loop.stop_reason = self.signal_name  # also a signal that came while the last save committed

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


class Report(Hook):
  """Says how the run ended (`say(loop)`) once every other hook is closed. Last in the list, so the
  signal handlers are still in place while it speaks: a SIGTERM that comes until the run has said
  it saved is acknowledged, not fatal."""

  def __init__(self, say: Callable[[Loop], None]):
    self._say = say

  def due(self, loop):
    return False

  def close(self, loop):
    if not loop.failed:
      self._say(loop)


def _say(message: str) -> None:
  """A line from a signal handler: os.write, since print may be mid-write (a reentrant call)."""
  if jax.process_index() == 0:
    try:
      os.write(sys.stdout.fileno(), (message + '\n').encode())
    except (AttributeError, ValueError, OSError):  # stdout is not a file (captured)
      pass
