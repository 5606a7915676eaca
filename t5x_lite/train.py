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
import os
import socket
import time
from pathlib import Path
from typing import Mapping, Sequence

import gin
import jax
import numpy as np
from etils import epath
from flax import nnx

from t5x_lite import (checkpoints, cli, curves, decoding, distributed, gin_utils, hardware, hooks,
                      loading, models, optimizer, partitioning, paths, progress, storage, trainer,
                      vocab)
from t5x_lite import eval as eval_lib
from t5x_lite.data import pipeline
from t5x_lite.models import T5Config


@gin.configurable
def compilation_cache(directory: str | None = 'auto') -> None:
  """Compiled programs persist across runs, as MaxText's jax_cache_dir: a rerun or resume loads its
  step instead of compiling it again (the tests' micro model: 13 s to 4 s here). 'auto': under the
  cache dir (`paths.cache_dir()`/jax_cache); None: off. JAX_COMPILATION_CACHE_DIR, if set, wins."""
  if directory and not jax.config.jax_compilation_cache_dir:
    path = paths.cache_dir() / 'jax_cache' if directory == 'auto' else Path(directory)
    jax.config.update('jax_compilation_cache_dir', str(path.expanduser()))
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
      # Every program, not only those over JAX's default 1 s: a run's start also compiles
      # dozens of small ones (init, a checksum program per array shape, evaluation).
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


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
  compilation_cache()
  _check_settings(train_steps=train_steps, batch_size=batch_size,
                  checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
                  log_period=log_period, seed=seed, num_data_shards=num_data_shards,
                  eval_period=eval_period, mesh_shape=mesh_shape,
                  task_feature_lengths=task_feature_lengths, on_nonfinite=on_nonfinite)
  _check_model_dir(model_dir)
  mesh, rules = _mesh(mesh_shape)
  vocabulary = _register_tasks(model_config, mixture_or_task_name)
  setup = trainer.setup_train_state(
      model_config, optimizer.make_optimizer(optimizer.learning_rate_schedule()), seed, mesh, rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules), _only_trainer(model_dir, is_main()):
    batch_sharding = jax.sharding.NamedSharding(
        mesh, partitioning.logical_to_mesh_spec(('batch', 'length'), rules, mesh))
    data = _Input(mixture_or_task_name, task_feature_lengths, batch_size, seed, num_data_shards,
                  model_config, vocabulary, model_dir, batch_sharding)
    ckpt = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'), keep=keep_checkpoints)
    loop, batches = _start(setup, ckpt, data, train_steps, initial_checkpoint_path, seed)
    run_hooks = _hooks(loop, setup, ckpt, data, batches, log_period=log_period,
                       eval_period=eval_period, checkpoint_period=checkpoint_period,
                       on_nonfinite=on_nonfinite, plot_loss=plot_loss)
    log(f'Training {mixture_or_task_name} for steps {loop.start_step}..{train_steps} on mesh '
        f'{dict(mesh.shape)} ({jax.device_count()} devices, {jax.process_count()} processes), '
        f'global batch {batch_size} from {batches.num_data_shards} data shard(s), '
        f'lengths {dict(task_feature_lengths)}')
    hooks.run(loop, lambda: data.global_batch(next(batches)), trainer.jit_train_step(setup),
              run_hooks)
    if loop.stop_reason:
      return loop.logged
    if decode_sample and jax.process_count() > 1:
      log('(no decoded sample: sample decoding runs in single-process jobs)')
    elif decode_sample and model_config.architecture == 'encoder_decoder':
      show_sample(setup.graphdef, loop.state['params'], mixture_or_task_name,
                  task_feature_lengths, vocabulary)
  return loop.logged


def is_main() -> bool:
  return jax.process_index() == 0


def _mesh(mesh_shape: Mapping[str, int]):
  """The device mesh and the gin-configured logical-axis rules, checked against each other."""
  try:
    mesh = partitioning.create_mesh(mesh_shape)
  except ValueError as e:
    raise gin_utils.UsageError(str(e)) from e
  rules = partitioning.logical_axis_rules()
  partitioning.check_mesh_axes(dict(mesh.shape), rules)
  return mesh, rules


def _check_model_dir(model_dir: str) -> None:
  """MODEL_DIR exists and can be written, before anything is built."""
  try:
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise gin_utils.UsageError(f'MODEL_DIR {model_dir} cannot be created ({e.strerror}); set '
                               '--gin.MODEL_DIR to a directory you can write.') from e
  if not storage.is_url(model_dir) and not os.access(model_dir, os.W_OK | os.X_OK):
    raise gin_utils.UsageError(f'MODEL_DIR {model_dir} cannot be written (no permission); set '
                               '--gin.MODEL_DIR to a directory you can write.')


def _register_tasks(model_config: T5Config, task_name: str):
  """Registers the tasks with the gin-configured vocabulary; checks the model can embed it and
  that `task_name` is one of them (before any MODEL_DIR comparison or checkpoint manager)."""
  vocabulary = vocab.get_vocabulary()
  if model_config.vocab_size < vocabulary.vocab_size:
    raise gin_utils.UsageError(
        f'the model vocab_size {model_config.vocab_size} is smaller than the vocabulary '
        f'({vocabulary.vocab_size} ids incl. sentinels); raise VOCAB_SIZE to at least that.')
  from t5x_lite import tasks  # registers tasks with the gin-configured vocabulary
  tasks.register_all(vocabulary)
  tasks.pretraining.check_text_task(task_name)
  try:
    pipeline.get_task(task_name)
  except ValueError as e:
    raise gin_utils.UsageError(str(e)) from e
  return vocabulary


class _Input:
  """The run's training data: this host's batches, fresh or resumed, and what identifies them in a
  checkpoint (a resume must continue the same stream)."""

  def __init__(self, task_name, task_feature_lengths, batch_size, seed, num_data_shards,
               model_config, vocabulary, model_dir, batch_sharding):
    self.task_name, self.lengths, self.batch_size = task_name, task_feature_lengths, batch_size
    self.seed, self.num_data_shards, self.model_config = seed, num_data_shards, model_config
    self.model_dir, self.sharding = model_dir, batch_sharding
    self.config = {'task': task_name, 'seed': seed, 'batch_size': batch_size,
                   'task_feature_lengths': dict(task_feature_lengths),
                   'vocabulary': _vocabulary_id(vocabulary)}

  def fresh(self, shards: int | None = None) -> pipeline.DataIterator:
    shards = shards or self.num_data_shards or jax.process_count()
    try:
      return pipeline.get_dataset(
          self.task_name, self.lengths, self.batch_size, split='train', shuffle=True,
          seed=self.seed, num_data_shards=shards,
          data_shards=_host_data_shards(self.sharding, self.batch_size, shards),
          feature_converter=pipeline.feature_converter(self.model_config))
    except (ValueError, FileNotFoundError) as e:  # bad settings; a dataset not prepared
      raise gin_utils.UsageError(str(e)) from e

  def resumed(self, data_state: Mapping) -> pipeline.DataIterator:
    _check_same_data(data_state, self.config, self.model_dir)
    return self.fresh(_resumed_data_shards(self.num_data_shards, data_state))

  def global_batch(self, local: Mapping[str, np.ndarray]) -> dict:
    """This host's rows as the global batch's arrays."""
    return {k: jax.make_array_from_process_local_data(self.sharding, v,
                                                      (self.batch_size, *v.shape[1:]))
            for k, v in local.items()}


def _start(setup, ckpt: checkpoints.Checkpointer, data: _Input, train_steps: int,
           initial_checkpoint_path: str | None, seed: int):
  """The loop at MODEL_DIR's newest good checkpoint, or at step 0 (fresh or from
  INITIAL_CHECKPOINT_PATH's params), with the batches from there on."""
  try:
    restored = ckpt.restore(setup.abstract_state, data.resumed)
    batches = data.fresh() if restored is None else None  # bad data config: fail fast
  except BaseException:
    ckpt.close()  # else its clean-up thread dies at exit with a traceback after our error line
    raise
  if restored is not None:
    start_step, state, data_state, batches = restored
    log(f'Resumed from step {start_step} in {ckpt.directory} '
        f"(data position: batch {data_state.get('batch', start_step)})")
    return hooks.Loop(start_step, state, train_steps, start_step,
                      skipped=int(data_state.get('skipped_steps', 0))), batches
  if not initial_checkpoint_path:
    return hooks.Loop(0, setup.init(), train_steps), batches
  try:
    loaded = loading.load_model(data.model_config, initial_checkpoint_path,
                                abstract_params=setup.abstract_state['params'])
  except gin_utils.UsageError as e:
    raise gin_utils.UsageError(f'INITIAL_CHECKPOINT_PATH: {e}') from e
  log(f'Initialized params from {loaded.step_dir}')
  return hooks.Loop(0, setup.state_with_params(loaded.params, seed), train_steps), batches


def _hooks(loop: hooks.Loop, setup, ckpt: checkpoints.Checkpointer, data: _Input,
           batches: pipeline.DataIterator, *, log_period: int, eval_period: int,
           checkpoint_period: int, on_nonfinite: str, plot_loss: bool) -> list[hooks.Hook]:
  """The run's hooks in the order they act each step and are closed: the finiteness check before
  anything reads the step, the metrics writer closed before the last checkpoint is awaited, and
  the signal handlers kept until the run has said how it ended."""
  schedule = optimizer.learning_rate_schedule()
  peak = hardware.peak_flops_per_device()
  if peak is None:
    log(hardware.unknown_peak_message())
  writer = progress.MetricsWriter(data.model_dir, loop.train_steps, enabled=is_main(),
                                  resume_step=loop.start_step)
  timing = hooks.Timing(log)
  tokens = data.batch_size * sum(data.lengths.values())
  flops = models.training_flops_per_example(data.model_config, data.lengths) * data.batch_size
  peak = peak and peak * jax.device_count()
  rates = lambda s: {'steps_per_s': 1.0 / s, 'tokens_per_s': tokens / s,
                     **({'mfu': flops / s / peak} if peak else {})}

  def save(loop):
    try:
      ckpt.save(loop.step, loop.state,
                {**data.config, 'batch': loop.step, 'num_data_shards': batches.num_data_shards,
                 'skipped_steps': loop.skipped}, batches)
    except OSError as e:
      raise _save_failed(ckpt, e) from e
    except ValueError as e:
      raise gin_utils.UsageError(
          f'not saving step {loop.step}: {e}. The last good checkpoint is step '
          f'{ckpt.last_good_step}; lower the learning rate and rerun the same command.') from e

  def close():
    try:
      ckpt.close()
    except OSError as e:
      raise _save_failed(ckpt, e) from e

  def committed_step():
    try:
      ckpt.wait()  # a save in flight when a step goes non-finite counts once committed
    except OSError as e:
      raise _save_failed(ckpt, e) from e
    return ckpt.last_good_step

  return [timing,
          hooks.NonFinite(on_nonfinite, schedule, committed_step, ckpt.directory, log),
          hooks.Metrics(log_period, writer, timing.timer, schedule, rates,
                        count_skipped=on_nonfinite == 'skip'),
          hooks.Evaluation(eval_period,
                           lambda: _make_evaluator(data.task_name, data.lengths, data.model_config),
                           lambda loop: nnx.merge(setup.graphdef, loop.state['params']), writer),
          hooks.Checkpoint(checkpoint_period, save, close),
          hooks.Preemption(saving=ckpt.saving),
          hooks.Report(lambda loop: _finish(loop, ckpt, data.model_dir, plot_loss))]


def _finish(loop: hooks.Loop, ckpt: checkpoints.Checkpointer, model_dir: str, plot_loss: bool):
  """What the run says once the loop is over: why it stopped, where its checkpoint and curve are."""
  if loop.stop_reason:
    log(f'{loop.stop_reason} received: stopped after step {loop.step} and saved checkpoint step '
        f'{loop.step} to {ckpt.directory}. Rerun the same command to resume.')
  elif loop.step > loop.start_step:
    log(f'Saved checkpoint step {loop.step} to {ckpt.directory}')
    if is_main() and plot_loss and curves.plot_loss(model_dir):
      log(f'Loss curve: {os.path.join(model_dir, curves.PNG)}')
  else:
    log(f'{ckpt.directory} is already at step {loop.step} = TRAIN_STEPS; nothing to train '
        '(raise --gin.TRAIN_STEPS to continue).')


# Each integer setting: (the name users set it by, its smallest value).
_INT_SETTINGS = {'train_steps': ('TRAIN_STEPS', 1), 'batch_size': ('BATCH_SIZE', 1),
                 'checkpoint_period': ('CHECKPOINT_PERIOD', 1),
                 'keep_checkpoints': ('train.keep_checkpoints', 0),
                 'log_period': ('train.log_period', 1), 'seed': ('train.seed', 0),
                 'num_data_shards': ('train.num_data_shards', 1),
                 'eval_period': ('train.eval_period', 0)}


def _check_settings(*, mesh_shape, task_feature_lengths, on_nonfinite, **ints) -> None:
  """gin hands values through untyped: check them here, before anything compiles or is written."""
  if on_nonfinite not in ('stop', 'skip'):
    raise gin_utils.UsageError(f"train.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}.")
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
def _only_trainer(model_dir: str, main_process: bool):
  """Two trainers on one MODEL_DIR would interleave checkpoints and metrics: the job's main
  process holds MODEL_DIR/.trainer.lock while it trains (released when it exits, however). A
  bucket has no such lock: there, one trainer per MODEL_DIR is the launcher's to keep."""
  if not main_process or storage.is_url(model_dir):
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

