"""What a run writes for people while it trains: metrics.jsonl, TensorBoard events and the progress
line (`MetricsWriter`), and the step timer behind its throughput figures."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Mapping

from etils import epath

from t5x_lite import storage


class _Events:
  """TensorBoard scalars in an event file as TensorBoard's own writers lay it out (TFRecords of
  Event protos, the first naming the format), through TensorFlow, which the input pipeline has
  loaded already. tensorboardX, used before, imports torch wherever torch is installed (the test
  set-up's HF interop): 2 s of every run's start-up here."""

  def __init__(self, directory: str):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.util import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(directory, exist_ok=True)
    # Microseconds and the pid: a second writer in the same second must not truncate the first's.
    name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
    self._file = tf.io.TFRecordWriter(os.path.join(directory, name))
    self._add(self._event(wall_time=time.time(), file_version='brain.Event:2'))

  def _add(self, event) -> None:
    self._file.write(event.SerializeToString())
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v))
                                   for k, v in values.items()])
    self._add(self._event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self) -> None:
    self._file.close()


class _LocalFiles:
  """metrics.jsonl appended to, and TensorBoard events written in place, in a local MODEL_DIR."""

  def __init__(self, model_dir: str):
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    self._jsonl = open(os.path.join(model_dir, 'metrics.jsonl'), 'a')
    self.events_dir = os.path.join(model_dir, 'train')

  def add(self, line: str) -> None:
    self._jsonl.write(line)
    self._jsonl.flush()

  def events_written(self) -> None:
    pass

  def close(self) -> None:
    self._jsonl.close()


class _BucketFiles:
  """The same in a bucket, which has no append: metrics.jsonl is rewritten whole, and the
  TensorBoard events are written to a local copy that is copied up, at each logged step."""

  def __init__(self, model_dir: str):
    self._path = os.path.join(model_dir, 'metrics.jsonl')
    self._rows = storage.read_text(self._path) or ''
    self._remote = os.path.join(model_dir, 'train')
    self._staged = contextlib.ExitStack()
    self.events_dir = self._staged.enter_context(storage.staged(self._remote, upload=True))

  def add(self, line: str) -> None:
    self._rows += line
    storage.write_atomically(self._path, self._rows)

  def events_written(self) -> None:
    storage.copy_tree(self.events_dir, self._remote)

  def close(self) -> None:
    self._staged.close()  # the last copy up


class MetricsWriter:
  """Writes each logged step to MODEL_DIR/metrics.jsonl and TensorBoard (locally or in a bucket),
  and prints a progress line (step, loss, tokens/s, MFU, ETA). Only process 0 writes.

  A training run passes `resume_step` (0 when it starts fresh): rows after it belong to steps it
  will redo and are dropped. Other writers (standalone eval) leave every row in place.
  """

  def __init__(self, model_dir: str, total_steps: int, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self.total_steps = total_steps
    if not enabled:
      return
    if resume_step is not None:
      _drop_rows_after(os.path.join(model_dir, 'metrics.jsonl'), resume_step)
    self._files = (_BucketFiles if storage.is_url(model_dir) else _LocalFiles)(model_dir)
    self._tb = _Events(self._files.events_dir)

  def write(self, step: int, metrics: Mapping[str, float], eta_s: float | None = None):
    """One row; training rows (with 'loss') also print the progress line."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self._files.add(json.dumps(record) + '\n')
    self._tb.scalars(step, metrics)
    self._files.events_written()
    if 'loss' not in metrics:
      print(f'step {step:>6d}/{self.total_steps} | '
            + ' | '.join(f'{k} {v:.4g}' for k, v in metrics.items()), flush=True)
      return
    eta = '' if eta_s is None else f' | ETA {format_seconds(eta_s)}'
    mfu = f" | MFU {metrics['mfu']:.1%}" if 'mfu' in metrics else ''
    print(f"step {step:>6d}/{self.total_steps} | loss {metrics['loss']:.4f} | "
          f"acc {metrics['accuracy']:.3f} | lr {metrics['learning_rate']:.2e} | "
          f"{metrics.get('tokens_per_s', 0.0):,.0f} tokens/s{mfu}{eta}", flush=True)

  def close(self):
    if self.enabled:
      self._tb.close()
      self._files.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rows a killed run logged after its last checkpoint are logged again on resume: drop them
  first, so metrics.jsonl has one row per step."""
  text = storage.read_text(path)
  if text is None:
    return
  lines = text.splitlines(keepends=True)
  keep = [line for line in lines if line.strip() and _row_step(line) <= step]
  if len(keep) != len(lines):
    storage.write_atomically(path, ''.join(keep))


def _row_step(line: str) -> float:
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return float('inf')  # a torn last line from a killed writer


def format_seconds(s: float) -> str:
  """h:mm:ss (m:ss under an hour): ETAs and run times."""
  s = int(round(max(s, 0)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h}:{m:02d}:{sec:02d}' if h else f'{m}:{sec:02d}'


class StepTimer:
  """Throughput over the steps since the last report, excluding the first (compile) step."""

  def __init__(self):
    self._t = None
    self._steps = 0

  def start(self):
    self._t = time.perf_counter()
    self._steps = 0

  def tick(self):
    self._steps += 1

  def rate(self) -> tuple[float, int]:
    """(seconds per step, steps) since start; restarts the window."""
    if self._t is None or self._steps == 0:
      return float('nan'), 0
    now = time.perf_counter()
    out = ((now - self._t) / self._steps, self._steps)
    self._t, self._steps = now, 0
    return out
