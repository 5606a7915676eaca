"""`python -m t5x_lite.train --gin_file=F [--gin_file=G] --gin.NAME=VALUE ... [distributed flags]`

Joins the multi-process job if there is one (t5x_lite.distributed: flags, launcher environment or
cluster detection), reads gin, builds the mesh and the sharded train state, resumes from the newest checkpoint in
MODEL_DIR if there is one, trains, checkpoints every CHECKPOINT_PERIOD steps and at the end, and
decodes a sample from the validation split.
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('train'))

import contextlib
import hashlib
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import gin
import jax
import numpy as np
from etils import epath
from flax import nnx

from t5x_lite import (checkpoints, cli, curves, decoding, distributed, gin_utils, hardware,
                      partitioning, paths, storage, trainer, vocab)
from t5x_lite import eval as eval_lib
from t5x_lite.data import pipeline
from t5x_lite import models
from t5x_lite.models import T5Config


@gin.configurable
def compilation_cache(directory: str | None = 'auto') -> None:
  """Compiled programs persist across runs, as MaxText's jax_cache_dir: a rerun or resume loads its
  step instead of compiling it again (the tests' micro model: 13 s to 4 s here). 'auto': under the
  cache dir (`paths.cache_dir()`/jax_cache); None: off. JAX_COMPILATION_CACHE_DIR, if set, wins."""
  if directory and not jax.config.jax_compilation_cache_dir:
    path = paths.cache_dir() / 'jax_cache' if directory == 'auto' else Path(directory)
    jax.config.update('jax_compilation_cache_dir', str(path.expanduser()))


@gin.configurable
def train(*,
          model_config: T5Config = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          model_dir: str = gin.REQUIRED,
          checkpoint_period: int = 1000,
          keep_checkpoints: int = 3,
          mesh_shape: Mapping[str, int] = {'data': -1},  # pylint: disable=dangerous-default-value
          log_period: int = 10,
          seed: int = 0,
          num_data_shards: int | None = None,
          initial_checkpoint_path: str | None = None,
          eval_period: int = 0,
          decode_sample: bool = True,
          plot_loss: bool = True,
          on_nonfinite: str = 'stop') -> dict:
  """Trains `model_config` on `mixture_or_task_name`; returns the last logged metrics.

  `num_data_shards`: the data is read as this many seqio shards (see data/pipeline.py); the
  global batches depend on it, not on the process count. By default it is the process count of
  the job's first start (T5X's one shard per host), recorded in the checkpoint so that a resume on
  another process count reads the same examples; set it to a multiple of every process count you
  may run with to compare runs across process counts.

  `initial_checkpoint_path` (fine-tuning): when MODEL_DIR has no checkpoint yet, the params come
  from this checkpoint (a MODEL_DIR, its checkpoints/ or one step directory; ours or converted from
  HF by t5x_lite.convert); the optimizer state, step and data position start fresh, so TRAIN_STEPS
  counts fine-tuning steps. Once MODEL_DIR has a checkpoint, the run resumes from that instead.

  `eval_period`: every that many steps (and at the end), decode the task's validation split and run
  its metric functions (t5x_lite.eval.Evaluator); 0 turns it off.

  `plot_loss`: when training ends, draw MODEL_DIR/loss.png from metrics.jsonl (t5x_lite.curves).

  `on_nonfinite`: a step whose loss, gradient, or updated params or optimizer state holds a NaN/Inf
  is never applied; 'stop' ends the run there (exit 2, nothing after the last checkpoint saved),
  'skip' goes on and counts such steps.

  The checkpoint holds the input position, so a run killed anywhere and rerun with the same command
  continues bit for bit; SIGTERM/SIGINT finish the current step, save, and exit 0, however many
  arrive while the save commits.
  """
  if on_nonfinite not in ('stop', 'skip'):
    raise gin_utils.UsageError(f"train.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}.")
  compilation_cache()
  _check_settings(train_steps=train_steps, batch_size=batch_size,
                  checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
                  log_period=log_period, seed=seed, num_data_shards=num_data_shards,
                  eval_period=eval_period, mesh_shape=mesh_shape,
                  task_feature_lengths=task_feature_lengths)
  try:
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise gin_utils.UsageError(f'MODEL_DIR {model_dir} cannot be created ({e.strerror}); set '
                               '--gin.MODEL_DIR to a directory you can write.') from e
  if not storage.is_url(model_dir) and not os.access(model_dir, os.W_OK | os.X_OK):
    raise gin_utils.UsageError(f'MODEL_DIR {model_dir} cannot be written (no permission); set '
                               '--gin.MODEL_DIR to a directory you can write.')
  is_main = jax.process_index() == 0
  try:
    mesh = partitioning.create_mesh(mesh_shape)
  except ValueError as e:
    raise gin_utils.UsageError(str(e)) from e
  rules = partitioning.logical_axis_rules()
  partitioning.check_mesh_axes(dict(mesh.shape), rules)

  vocabulary = vocab.get_vocabulary()
  if model_config.vocab_size < vocabulary.vocab_size:
    raise gin_utils.UsageError(
        f'the model vocab_size {model_config.vocab_size} is smaller than the vocabulary '
        f'({vocabulary.vocab_size} ids incl. sentinels); raise VOCAB_SIZE to at least that.')
  import tasks  # registers tasks with the gin-configured vocabulary
  tasks.register_all(vocabulary)
  tasks.pretraining.check_text_task(mixture_or_task_name)
  try:  # an unknown task is that, before any MODEL_DIR comparison or checkpoint manager
    pipeline.get_task(mixture_or_task_name)
  except ValueError as e:
    raise gin_utils.UsageError(str(e)) from e

  tx = trainer.make_optimizer(trainer.learning_rate_schedule())
  setup = trainer.setup_train_state(model_config, tx, seed, mesh, rules)
  data_config = {'task': mixture_or_task_name, 'seed': seed, 'batch_size': batch_size,
                 'task_feature_lengths': dict(task_feature_lengths),
                 'vocabulary': _vocabulary_id(vocabulary)}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules), _only_trainer(model_dir, is_main):
    batch_spec = partitioning.logical_to_mesh_spec(('batch', 'length'), rules, mesh)
    batch_sharding = jax.sharding.NamedSharding(mesh, batch_spec)

    def make_batches(shards: int) -> pipeline.DataIterator:
      try:
        return pipeline.get_dataset(
            mixture_or_task_name, task_feature_lengths, batch_size, split='train', shuffle=True,
            seed=seed, num_data_shards=shards,
            data_shards=_host_data_shards(batch_sharding, batch_size, shards),
            feature_converter=models.feature_converter(model_config))
      except (ValueError, FileNotFoundError) as e:  # bad settings; a dataset not prepared
        raise gin_utils.UsageError(str(e)) from e

    def resumed_batches(data_state: Mapping) -> pipeline.DataIterator:
      _check_same_data(data_state, data_config, model_dir)
      return make_batches(_resumed_data_shards(num_data_shards, data_state)
                          or jax.process_count())

    ckpt = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'), keep=keep_checkpoints)
    try:
      restored = ckpt.restore(setup.abstract_state, resumed_batches)
      if restored is None:  # bad data config: fail fast
        batches = make_batches(num_data_shards or jax.process_count())
    except BaseException:
      ckpt.close()  # else its clean-up thread dies at exit with a traceback after our error line
      raise
    skipped = 0
    if restored is None:
      start_step = 0
      if initial_checkpoint_path:
        try:
          params, source = checkpoints.load_params(initial_checkpoint_path,
                                                   setup.abstract_state['params'])
        except (FileNotFoundError, ValueError) as e:
          raise gin_utils.UsageError(f'INITIAL_CHECKPOINT_PATH: {e}') from e
        state = setup.state_with_params(params, seed)
        log(f'Initialized params from {source}')
      else:
        state = setup.init()
    else:
      start_step, state, data_state, batches = restored
      skipped = int(data_state.get('skipped_steps', 0))
      log(f'Resumed from step {start_step} in {ckpt.directory} '
          f"(data position: batch {data_state.get('batch', start_step)})")
    num_data_shards = batches.num_data_shards
    step_fn = trainer.jit_train_step(setup)

    flops_per_step = models.training_flops_per_example(
        model_config, task_feature_lengths) * batch_size
    tokens_per_step = batch_size * sum(task_feature_lengths.values())
    peak = hardware.peak_flops_per_device()
    if peak is None:
      log(hardware.unknown_peak_message())
    else:
      peak *= jax.device_count()
    schedule = trainer.learning_rate_schedule()
    writer = trainer.MetricsWriter(model_dir, train_steps, enabled=is_main, resume_step=start_step)
    timer = trainer.StepTimer()
    log(f'Training {mixture_or_task_name} for steps {start_step}..{train_steps} on mesh '
        f'{dict(mesh.shape)} ({jax.device_count()} devices, {jax.process_count()} processes), '
        f'global batch {batch_size} from {num_data_shards} data shard(s), '
        f'lengths {dict(task_feature_lengths)}')

    def save(step):
      try:
        ckpt.save(step, state, {**data_config, 'batch': step, 'num_data_shards': num_data_shards,
                                'skipped_steps': skipped}, batches)
      except OSError as e:
        raise _save_failed(ckpt, e) from e
      except ValueError as e:
        raise gin_utils.UsageError(
            f'not saving step {step}: {e}. The last good checkpoint is step '
            f'{ckpt.last_good_step}; lower the learning rate and rerun the same command.') from e

    def check_finite(step, metrics):
      """The step function never applies a non-finite update; here the run stops or counts it."""
      nonlocal skipped
      if bool(jax.device_get(metrics['finite'])):
        return
      loss, gnorm = (float(x) for x in jax.device_get((metrics['loss'], metrics['grad_norm'])))
      what = f'loss {loss}, grad norm {gnorm}, learning rate {float(schedule(step - 1)):.3g}'
      if math.isfinite(loss) and math.isfinite(gnorm):
        what += ' (the update is not finite)'
      if on_nonfinite == 'skip':
        skipped += 1
        log(f'WARNING: step {step}: {what}; update skipped ({skipped} skipped so far)')
        return
      _close(ckpt, writer)
      good = ckpt.last_good_step
      raise gin_utils.UsageError(
          f'{what} at step {step}: training stopped before applying it. '
          + (f'The last good checkpoint is step {good} in {ckpt.directory}. ' if good is not None
             else 'No checkpoint has been saved yet. ')
          + 'Lower the learning rate (check learning_rate_schedule) or clip gradients '
          '(--gin.make_optimizer.grad_clip_norm=1.0), or skip such steps with '
          "--gin.train.on_nonfinite='skip'; then rerun the same command to resume.")

    last = {}
    evaluator = None
    step = start_step
    unchecked = None  # (step, metrics) whose finiteness is read one step later, without a stall
    stop = _StopSignals(saving=ckpt.saving)
    t_start = time.perf_counter()
    with stop:
      while step < train_steps:
        local = next(batches)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v,
                                                           (batch_size, *v.shape[1:]))
                 for k, v in local.items()}
        state, metrics = step_fn(state, batch)
        step += 1
        if step == start_step + 1:
          jax.block_until_ready(metrics)  # the first step includes compilation: time from here
          timer.start()
          compile_s = time.perf_counter() - t_start
          log(f'step {step} (compiled in {compile_s:.1f}s)')
        else:
          timer.tick()
        if unchecked:
          check_finite(*unchecked)
        unchecked = (step, metrics)
        stopping = stop.requested(step)
        logging_now = step % log_period == 0 or step == train_steps
        evaluating = eval_period and (step % eval_period == 0 or step == train_steps)
        saving = step % checkpoint_period == 0 or step == train_steps or stopping
        if logging_now or evaluating or saving:
          check_finite(*unchecked)
          unchecked = None
        if logging_now:
          metrics = jax.device_get(metrics)
          s_per_step, n = timer.rate()
          last = {k: float(v) for k, v in metrics.items()}
          last['learning_rate'] = float(schedule(step - 1))
          if n:
            last['steps_per_s'] = 1.0 / s_per_step
            last['tokens_per_s'] = tokens_per_step / s_per_step
            if peak:
              last['mfu'] = flops_per_step / s_per_step / peak
          if on_nonfinite == 'skip':
            last['skipped_steps'] = skipped
          eta = (train_steps - step) * s_per_step if n else None
          writer.write(step, last, eta)
        if evaluating:
          if evaluator is None:
            evaluator = _make_evaluator(mixture_or_task_name, task_feature_lengths, model_config)
          if evaluator:
            writer.write(step, evaluator.evaluate(nnx.merge(setup.graphdef, state['params'])))
        if saving:
          save(step)
        if stopping:
          break
      try:
        _close(ckpt, writer)
      except OSError as e:
        raise _save_failed(ckpt, e) from e
      if stop.signal_name:
        log(f'{stop.signal_name} received: stopped after step {step} and saved checkpoint step '
            f'{step} to {ckpt.directory}. Rerun the same command to resume.')
        return last
      if step > start_step:
        log(f'Saved checkpoint step {step} to {ckpt.directory}')
        if is_main and plot_loss and curves.plot_loss(model_dir):
          log(f'Loss curve: {os.path.join(model_dir, curves.PNG)}')
      else:
        log(f'{ckpt.directory} is already at step {step} = TRAIN_STEPS; nothing to train '
            '(raise --gin.TRAIN_STEPS to continue).')
      if decode_sample and jax.process_count() > 1:
        log('(no decoded sample: sample decoding runs in single-process jobs)')
      elif decode_sample and model_config.architecture == 'encoder_decoder':
        show_sample(setup.graphdef, state['params'], mixture_or_task_name, task_feature_lengths,
                    vocabulary)
  return last


# Each integer setting: (the name users set it by, its smallest value).
_INT_SETTINGS = {'train_steps': ('TRAIN_STEPS', 1), 'batch_size': ('BATCH_SIZE', 1),
                 'checkpoint_period': ('CHECKPOINT_PERIOD', 1),
                 'keep_checkpoints': ('train.keep_checkpoints', 0),
                 'log_period': ('train.log_period', 1), 'seed': ('train.seed', 0),
                 'num_data_shards': ('train.num_data_shards', 1),
                 'eval_period': ('train.eval_period', 0)}


def _check_settings(*, mesh_shape, task_feature_lengths, **ints) -> None:
  """gin hands values through untyped: check them here, before anything compiles or is written."""
  for key, value in ints.items():
    name, minimum = _INT_SETTINGS[key]
    if value is not None or key != 'num_data_shards':
      gin_utils.check_int(name, value, minimum)
  for name, mapping in (('MESH_SHAPE', mesh_shape), ('TASK_FEATURE_LENGTHS', task_feature_lengths)):
    example = "{'data': -1, 'model': 1}" if name == 'MESH_SHAPE' else "{'inputs': 512, 'targets': 114}"
    if not isinstance(mapping, Mapping) or not all(isinstance(k, str) for k in mapping):
      raise gin_utils.UsageError(f'{name} must be a dict of names to sizes, got {mapping!r}; '
                                 f'e.g. "--gin.{name}={example}".')
    for key, value in mapping.items():
      gin_utils.check_int(f'{name}[{key!r}]', value, -1 if name == 'MESH_SHAPE' else 1,
                          fix=f'e.g. "--gin.{name}={example}"')


def log(message: str) -> None:
  """Progress for people: printed once per job (by process 0), flushed at once."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _make_evaluator(task_name, task_feature_lengths, config):
  """An Evaluator, or False (said once) when the task has no metrics or the job is multi-process."""
  if jax.process_count() > 1:
    log('(EVAL_PERIOD: in-training evaluation runs in single-process jobs; use t5x_lite.eval)')
    return False
  if not eval_lib.has_metrics(task_name):
    log(f'(EVAL_PERIOD: {task_name} has no metric functions; nothing to evaluate)')
    return False
  return eval_lib.Evaluator(task_name, task_feature_lengths, config)


def _vocabulary_id(vocabulary) -> dict:
  """What identifies the vocabulary in a checkpoint: a different one makes its ids meaningless."""
  return {'sentencepiece_sha256': hashlib.sha256(vocabulary.sp_model).hexdigest()[:16],
          'vocab_size': int(vocabulary.vocab_size), 'extra_ids': int(vocabulary.extra_ids)}


def _check_same_data(saved: Mapping, current: Mapping, model_dir: str) -> None:
  """A resumed run continues the checkpoint's data stream; another task, batch, length, seed or
  vocabulary would not, so refuse rather than mix them."""
  for key, value in current.items():
    if key in saved and saved[key] != value:
      raise gin_utils.UsageError(
          f'MODEL_DIR {model_dir} holds a run with {key} {saved[key]}, and this config has '
          f'{value}; resuming would not continue its data. Use a new MODEL_DIR (start from its '
          f'params with --gin.INITIAL_CHECKPOINT_PATH={model_dir!r}), or restore the setting.')


def _save_failed(ckpt: checkpoints.Checkpointer, error: OSError) -> gin_utils.UsageError:
  return gin_utils.UsageError(
      f'could not write a checkpoint to {ckpt.directory} ({error}); the last complete checkpoint '
      f'is step {ckpt.last_good_step}. {checkpoints.save_failure_advice(error)}, then rerun the '
      'same command to resume.')


@contextlib.contextmanager
def _only_trainer(model_dir: str, is_main: bool):
  """Two trainers on one MODEL_DIR would interleave checkpoints and metrics: the job's main
  process holds MODEL_DIR/.trainer.lock while it trains (released when it exits, however). A
  bucket has no such lock: there, one trainer per MODEL_DIR is the launcher's to keep."""
  if not is_main or storage.is_url(model_dir):
    yield
    return
  owner = (f'host {socket.gethostname()}, pid {os.getpid()}, started '
           f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
  try:
    with paths.owner_lock(os.path.join(model_dir, '.trainer.lock'), owner):
      yield
  except paths.Locked as e:
    raise gin_utils.UsageError(
        f'MODEL_DIR {model_dir} is in use by another trainer ({e}); wait for it to finish or stop '
        'it, or set --gin.MODEL_DIR to another directory.') from None


def _close(ckpt: checkpoints.Checkpointer, writer: trainer.MetricsWriter) -> None:
  writer.close()
  ckpt.close()


class _StopSignals:
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

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal_name = 'preemption notice'
      except (RuntimeError, AttributeError):
        pass
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _say(message: str) -> None:
  """A line from a signal handler: os.write, since print may be mid-write (a reentrant call)."""
  if jax.process_index() == 0:
    try:
      os.write(sys.stdout.fileno(), (message + '\n').encode())
    except (AttributeError, ValueError, OSError):  # stdout is not a file (captured)
      pass


def _resumed_data_shards(configured: int | None, data_state: Mapping) -> int | None:
  """The checkpoint's shard count wins over the default: changing it would change the data."""
  stored = data_state.get('num_data_shards')
  if configured is not None and stored is not None and configured != stored:
    raise gin_utils.UsageError(
        f'train.num_data_shards={configured}, but the checkpoint was written reading '
        f'{stored} data shards; resuming with another count would change which examples come '
        f'next. Drop the binding or set --gin.train.num_data_shards={stored}.')
  return configured or stored


def _host_data_shards(batch_sharding, batch_size: int, num_data_shards: int) -> range:
  """The data shards whose rows of each global batch live on this process's devices."""
  start, stop = partitioning.process_batch_rows(batch_sharding, batch_size)
  if batch_size % num_data_shards:
    raise gin_utils.UsageError(f'BATCH_SIZE {batch_size} must be a multiple of '
                               f'train.num_data_shards ({num_data_shards}).')
  block = batch_size // num_data_shards
  if start % block or stop % block:
    raise gin_utils.UsageError(
        f'process {jax.process_index()} holds rows [{start}, {stop}) of each global batch, which '
        f'are not whole blocks of {block} rows ({num_data_shards} data shards); set '
        f'--gin.train.num_data_shards to a multiple of {jax.process_count()} (the process count).')
  return range(start // block, stop // block)


def show_sample(graphdef, params, task_name, task_feature_lengths, vocabulary, num: int = 1):
  """Greedy-decodes `num` validation example(s) and prints inputs, target and prediction."""
  batch = next(pipeline.get_dataset(task_name, task_feature_lengths, num, split='validation',
                                    shuffle=False, pack=False))
  predictions, _ = decoding.decode(nnx.merge(graphdef, params), batch,
                                   max_decode_length=task_feature_lengths['targets'])
  for i in range(num):
    if jax.process_index() == 0:
      print('--- sample (validation) ---')
      print('inputs:    ', vocabulary.decode(_trim(batch['encoder_input_tokens'][i])))
      print('targets:   ', vocabulary.decode(_trim(batch['decoder_target_tokens'][i])))
      print('prediction:', vocabulary.decode(_trim(np.asarray(predictions[i]))))


def _trim(ids: np.ndarray) -> list[int]:
  """Token ids up to (not including) the first EOS or padding."""
  out = []
  for t in ids.tolist():
    if t in (0, 1):
      break
    out.append(t)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  def run(rest):
    distributed.initialize(cli.parser('train').parse_args(rest))
    train()
  return gin_utils.run_main(run, None if argv is None else list(argv))

