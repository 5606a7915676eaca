"""Running a scaling sweep's grid: one local run after another with progress and an ETA (resumable,
Ctrl-C safe), or one cluster job per run; validation of each run (t5x_lite.eval); the held-out
run sized and predicted from the fits."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

from t5x_lite import curves  # metrics.jsonl rows; no JAX import
from t5x_lite.launch.common import UsageError
from t5x_lite.launch.scaling_fit import (HELDOUT, compute_optimal, fit_isoflop, isoflop_columns,
                                         predict_compute_optimal_loss)
from t5x_lite.launch.scaling_grid import (Base, Family, RunSpec, SweepError, closest_size,
                                          last_train_step, read_json, run_dir_of, run_dirs, run_gin,
                                          say, size_of, write_json)
from t5x_lite.launch.scaling_report import collect, eval_loss, si
from t5x_lite.progress import format_seconds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT_FACTOR = 4.0       # the held-out run's budget, over the largest fitted one
HELDOUT_BOOTSTRAP = 100    # refits behind its prediction interval


def write_run_files(out_dir: str, specs: Sequence[RunSpec], family_name: str, base_gin: str,
                    vocab_bindings: Sequence[str], train_flags: Sequence[str]) -> None:
  """Writes each run's run.gin and run.json; an existing run written with other settings is an
  error rather than a silent mix of two sweeps."""
  for spec in specs:
    run_dir = run_dir_of(out_dir, spec.name)
    text = run_gin(spec, family_name, run_dir, base_gin, vocab_bindings, train_flags)
    gin_path = os.path.join(run_dir, 'run.gin')
    meta = {**dataclasses.asdict(spec), 'family': family_name, 'tokens': spec.tokens,
            'flops': spec.flops, 'extra_flags': list(train_flags),
            'command': train_command(run_dir, train_flags)}
    old = read_json(os.path.join(run_dir, 'run.json'))
    if os.path.exists(gin_path):
      with open(gin_path) as f:
        same = _bindings(f.read()) == _bindings(text)
      if not same or (old and old.get('extra_flags') != list(train_flags)):
        raise UsageError(
            f'{run_dir} holds run {spec.name} written with other settings (its run.gin or extra '
            'flags differ); use a new --out_dir, or delete that run directory to redo it.')
    os.makedirs(run_dir, exist_ok=True)
    with open(gin_path, 'w') as f:
      f.write(text)
    write_json(os.path.join(run_dir, 'run.json'), meta)


def _bindings(gin_text: str) -> list[str]:
  """What a run gin configures: its lines without comments and blanks."""
  return [line for line in gin_text.splitlines() if line.strip() and not line.startswith('#')]


def train_command(run_dir: str, train_flags: Sequence[str], python: str | None = None) -> list:
  return [python or sys.executable, '-m', 't5x_lite.train',
          f'--gin_file={os.path.join(run_dir, "run.gin")}', *train_flags]


class TimeModel:
  """Predicts a run's wall time: a start-up cost (imports, data, compile, saves) plus steps ×
  seconds per step, which grows linearly with the step's FLOPs. Calibrated by finished runs."""

  # Fitted to the offline_english calibration sweep on 2 shared CPU cores (d_model 32..192,
  # bench/results/scaling_english_calibration): ~27 s to start (imports, tf.data, XLA compile),
  # then 0.017 s + FLOPs / 8e10 per step, plus logging and checkpoints.
  DEFAULT_STARTUP_S = 30.0
  DEFAULT_FLOPS_PER_S = 7e10
  DEFAULT_STEP_OVERHEAD_S = 0.02

  def __init__(self):
    self.steps: list[tuple[float, float]] = []   # (flops per step, seconds per step)
    self.startups: list[float] = []

  def add(self, flops_per_step: float, seconds_per_step: float, startup_s: float) -> None:
    if seconds_per_step > 0:
      self.steps.append((flops_per_step, seconds_per_step))
    if startup_s >= 0:
      self.startups.append(startup_s)

  def step_seconds(self, flops_per_step: float) -> float:
    if len({f for f, _ in self.steps}) >= 2:
      f, s = np.array(self.steps).T
      slope, intercept = np.polyfit(f, s, 1)
      if slope > 0:
        return max(intercept, 0.0) + slope * flops_per_step
    if self.steps:  # one size seen: scale it, keeping the default fixed overhead per step
      f, s = self.steps[-1]
      rate = f / max(s - self.DEFAULT_STEP_OVERHEAD_S, 1e-3)
      return self.DEFAULT_STEP_OVERHEAD_S + flops_per_step / rate
    return self.DEFAULT_STEP_OVERHEAD_S + flops_per_step / self.DEFAULT_FLOPS_PER_S

  def startup_seconds(self) -> float:
    return float(np.mean(self.startups)) if self.startups else self.DEFAULT_STARTUP_S

  def run_seconds(self, spec: RunSpec, steps: int | None = None) -> float:
    steps = spec.steps if steps is None else steps
    return self.startup_seconds() + steps * self.step_seconds(spec.flops_per_step)


class SubprocessRunner:
  """Runs one command with its output appended to a log file and each line passed on; the
  process gets its own session so that the sweep decides how it is stopped."""

  def __init__(self):
    self._proc = None

  def __call__(self, command: Sequence[str], log_path: str, on_line: Callable[[str], None]) -> int:
    pid_path = os.path.splitext(log_path)[0] + '.pid'
    _refuse_if_running(pid_path, command)
    with open(log_path, 'a') as log:
      log.write(f'$ {shlex.join(command)}\n')
      self._proc = subprocess.Popen(list(command), cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
      with open(pid_path, 'w') as f:
        f.write(str(self._proc.pid))
      try:
        for line in self._proc.stdout:
          log.write(line)
          log.flush()
          on_line(line)
        return self._proc.wait()
      except BaseException:  # a second Ctrl-C: abort the run at once rather than orphan it
        if self._proc.poll() is None:
          os.killpg(self._proc.pid, signal.SIGKILL)
          self._proc.wait()
        raise
      finally:
        if self._proc.poll() is not None and os.path.exists(pid_path):
          os.remove(pid_path)

  def terminate(self) -> None:
    """SIGTERM: the trainer finishes its step, saves a checkpoint and exits 0."""
    if self._proc is not None and self._proc.poll() is None:
      os.killpg(self._proc.pid, signal.SIGTERM)


def _refuse_if_running(pid_path: str, command: Sequence[str]) -> None:
  """A sweep killed outright leaves its trainer running; a second one on the same MODEL_DIR
  would corrupt it, so say so instead. (The process must still run this very command.)"""
  try:
    with open(pid_path) as f:
      pid = int(f.read())
    os.kill(pid, 0)  # raises ProcessLookupError once it is gone
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      args = f.read().rstrip(b'\0').split(b'\0')
  except (OSError, ValueError):
    return
  want = [c.encode() for c in command[1:]]
  # Match the arguments only: the interpreter may show up as a symlink target or behind a wrapper.
  alive = len(args) > len(want) and args[-len(want):] == want
  if alive:
    raise SweepError(f'{shlex.join(command[1:])} is still running (pid {pid}); wait for it to '
                     f'finish or stop it (kill -TERM {pid} saves a checkpoint), then rerun.')


_STEP_LINE = re.compile(r'^step\s+(\d+)/(\d+)\s*\|\s*loss\s+([-\d.naif]+)')
_RESUMED = re.compile(r'^Resumed from step (\d+)')


class Sweep:
  """Trains the runs of a sweep one after another, skipping complete ones, with progress and ETA.

  `runner(command, log_path, on_line) -> exit status` trains one run (SubprocessRunner by
  default; tests inject a fake). A run is complete once it has logged its last step and exited 0;
  RUN_DIR/done.json records that with its timings.
  """

  def __init__(self, out_dir: str, specs: Sequence[RunSpec], runner=None,
               clock: Callable[[], float] = time.monotonic, extra_seconds: float = 0.0):
    self.out_dir, self.specs = out_dir, list(specs)
    self.runner = runner or SubprocessRunner()
    self.clock = clock
    self.extra_seconds = extra_seconds  # work after training (evaluation), for the sweep ETA
    self.times = TimeModel()
    self.stop_requested = False
    self.trained = 0  # runs this sweep trained to the end
    for spec in self.specs:
      done = self.done(spec)
      if done:
        self.times.add(spec.flops_per_step, done.get('seconds_per_step', 0.0),
                       done.get('startup_s', -1.0))

  def done(self, spec: RunSpec) -> dict | None:
    return read_json(os.path.join(run_dir_of(self.out_dir, spec.name), 'done.json'))

  def train_all(self) -> bool:
    """True when every run is complete; False when a stop was requested (rerun to continue)."""
    pending = [s for s in self.specs if not self.done(s)]
    complete = len(self.specs) - len(pending)
    if complete:
      say(f'{complete} of {len(self.specs)} runs already complete; skipping them.')
    handlers = self._install_signal_handlers()
    try:
      for i, spec in enumerate(pending):
        index = complete + i + 1
        self._train_one(index, spec, pending[i + 1:])
        if self.stop_requested:
          say(f'Sweep stopped after {spec.name} saved its checkpoint. Rerun the same command to '
              'continue where it stopped.')
          return False
    finally:
      for sig, handler in handlers.items():
        signal.signal(sig, handler)
    return True

  def _install_signal_handlers(self) -> dict:
    import threading  # pylint: disable=import-outside-toplevel
    if threading.current_thread() is not threading.main_thread():
      return {}

    def handle(signum, _frame):
      if self.stop_requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
      self.stop_requested = True
      say(f'{signal.Signals(signum).name}: the current run saves a checkpoint, then the sweep '
          'stops (Ctrl-C again to abort at once).')
      terminate = getattr(self.runner, 'terminate', None)
      if terminate:
        terminate()

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

  def _train_one(self, index: int, spec: RunSpec, after: Sequence[RunSpec]) -> None:
    run_dir = run_dir_of(self.out_dir, spec.name)
    meta = read_json(os.path.join(run_dir, 'run.json'))
    if meta is None:
      raise SweepError(f'{run_dir}/run.json is missing; run `launch/scaling.py run` to write it.')
    start_step = last_train_step(run_dir)
    head = (f'[{index}/{len(self.specs)} {spec.name} N={si(spec.non_embedding_params)}]')
    resumed = f', resuming near step {start_step}' if start_step else ''
    say(f'{head} d_model {spec.d_model}, {spec.params:,} params '
        f'({spec.non_embedding_params:,} non-embedding), {spec.steps} steps, {spec.tokens:,} '
        f'tokens{resumed}; log: {os.path.join(run_dir, "train.log")}')
    t0 = self.clock()
    state = {'first': None, 'start': start_step, 'tail': []}

    def on_line(line: str) -> None:
      state['tail'] = (state['tail'] + [line.rstrip()])[-12:]
      m = _RESUMED.match(line)
      if m:
        state['start'] = int(m.group(1))
      m = _STEP_LINE.match(line)
      if not m:
        if line.startswith('error:'):
          say(f'{head} {line.rstrip()}')
        return
      step, total, loss = int(m.group(1)), int(m.group(2)), m.group(3)
      now = self.clock()
      if state['first'] is None:  # the first logged step includes the compile: time from here
        state['first'] = (step, now)
        rate = None
      else:
        first_step, first_t = state['first']
        rate = (step - first_step) / max(now - first_t, 1e-9) if step > first_step else None
      left = ((total - step) / rate if rate else
              (total - step) * self.times.step_seconds(spec.flops_per_step))
      sweep_left = left + sum(self.times.run_seconds(s) for s in after) + self.extra_seconds
      speed = f'{rate:.2f} steps/s' if rate else 'timing...'
      say(f'{head} step {step}/{total} | loss {loss} | {speed} | run ETA {format_seconds(left)} '
          f'| sweep ETA {format_seconds(sweep_left)}')

    status = self.runner(meta['command'], os.path.join(run_dir, 'train.log'), on_line)
    wall = self.clock() - t0
    if self.stop_requested and last_train_step(run_dir) < spec.steps:
      return  # stopped on request: saved (or killed in start-up, before it had anything to save)
    if status != 0:
      tail = '\n'.join('    ' + line for line in state['tail'])
      raise SweepError(f'run {spec.name} exited with status {status} after '
                       f'{format_seconds(wall)}; its last output:\n{tail}\nFix the cause and rerun '
                       'the same command: complete runs are skipped, this one resumes.')
    reached = last_train_step(run_dir)
    if reached < spec.steps:
      raise SweepError(f'run {spec.name} exited 0 at step {reached} of {spec.steps}; see '
                       f'{os.path.join(run_dir, "train.log")}.')
    rates = [r['steps_per_s'] for r in curves.read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
             if r.get('steps_per_s')]
    seconds_per_step = 1.0 / float(np.median(rates)) if rates else 0.0
    trained = spec.steps - state['start']
    startup = max(wall - trained * seconds_per_step, 0.0)
    self.times.add(spec.flops_per_step, seconds_per_step, startup)
    self.trained += 1
    write_json(os.path.join(run_dir, 'done.json'),
               {'wall_s': wall, 'steps_trained': trained, 'seconds_per_step': seconds_per_step,
                'startup_s': startup, 'finished': time.strftime('%Y-%m-%d %H:%M:%S')})
    say(f'{head} done in {format_seconds(wall)} ({seconds_per_step:.3f} s/step; '
        f'{startup:.0f} s of start-up, compile and checkpoint saves).')


def cluster_jobs(out_dir: str, specs: Sequence[RunSpec], mode: str, train_flags: Sequence[str],
                 args) -> dict[str, str]:
  """{path: text}: one SLURM script or TPU command file per run, and a submit_all.sh."""
  from t5x_lite.launch import slurm, tpu  # pylint: disable=import-outside-toplevel
  files, submit = {}, ['#!/bin/bash', '# Written by launch/scaling.py: start every run of the sweep.',
                       'set -euo pipefail', f'cd {shlex.quote(REPO)}']
  for spec in specs:
    run_dir = run_dir_of(out_dir, spec.name)
    flags = [f'--gin_file={os.path.join(run_dir, "run.gin")}', *train_flags]
    job = re.sub(r'[^A-Za-z0-9._-]', '-', f'{args.job_prefix}-{spec.name}')
    if mode == 'slurm':
      path = os.path.join(run_dir, 'job.sbatch')
      files[path] = slurm.sbatch_script(
          nodes=args.nodes, gpus_per_node=args.gpus_per_node, job_name=job, time=args.time,
          train_flags=flags, partition=args.partition, account=args.account,
          log_dir=os.path.join(run_dir, 'slurm_logs'))
      submit += [f'mkdir -p {shlex.quote(os.path.join(run_dir, "slurm_logs"))}',
                 f'sbatch {shlex.quote(path)}']
    else:
      path = os.path.join(run_dir, 'tpu_commands.sh')
      commands = tpu.tpu_commands(
          tpu_name=job.lower().replace('_', '-').replace('.', '-'),
          accelerator_type=args.accelerator_type, zone=args.zone, project=args.project,
          train_flags=flags, repo_url=args.repo_url)
      files[path] = '\n'.join(['#!/bin/bash', 'set -euo pipefail', *commands, ''])
      submit.append(f'bash {shlex.quote(path)}')
  files[os.path.join(out_dir, 'submit_all.sh')] = '\n'.join(submit + [''])
  return files


def evaluate_run(run_dir: str, max_batches: int = 0) -> dict:
  """Validation loss of a run's last checkpoint: nats per target token over the task's
  validation split, packed as in training, without z-loss. Logged to RUN_DIR/metrics.jsonl."""
  # pylint: disable=import-outside-toplevel
  import gin
  from t5x_lite import eval as eval_lib
  from t5x_lite import gin_utils, loading, progress, vocab
  meta = read_json(os.path.join(run_dir, 'run.json'))
  files, bindings, _ = gin_utils.split_flags(meta['command'][3:])
  gin.clear_config()
  gin_utils.parse(files, bindings)
  config = gin_utils.query_macro('MODEL_CONFIG')
  task = gin_utils.query_macro('MIXTURE_OR_TASK_NAME')
  lengths = dict(gin_utils.query_macro('TASK_FEATURE_LENGTHS'))
  batch_size = int(gin_utils.query_macro('BATCH_SIZE'))
  from t5x_lite import tasks  # registers the tasks with the gin-configured vocabulary
  tasks.register_all(vocab.get_vocabulary())
  loaded = loading.load_model(config, run_dir)
  try:
    scored = eval_lib.validation_loss(loaded.model, config, task, lengths, batch_size, max_batches)
  finally:
    gin.clear_config()
  step = loaded.step
  result = {f'eval/{task}/loss': scored['loss'], f'eval/{task}/target_tokens': scored['tokens']}
  writer = progress.MetricsWriter(run_dir, step, resume_step=step)
  writer.write(step, result)
  writer.close()
  return {'step': step, **scored}


def evaluate_pending(out_dir: str, max_batches: int = 0) -> int:
  """Evaluates every complete run that has no validation loss at its last step yet."""
  count = 0
  for run_dir in run_dirs(out_dir):
    meta = read_json(os.path.join(run_dir, 'run.json'))
    if last_train_step(run_dir) < meta['steps']:  # not trained to the end (yet)
      continue
    rows = curves.read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    if eval_loss(rows, meta['steps']) is not None:
      continue
    t0 = time.monotonic()
    try:
      if not os.path.isdir(os.path.join(run_dir, 'checkpoints', str(meta['steps']))):
        raise FileNotFoundError(f"no checkpoint of its last step {meta['steps']} in {run_dir}")
      r = evaluate_run(run_dir, max_batches)
    except (FileNotFoundError, ValueError) as e:  # t5x_lite's UsageErrors are ValueErrors
      raise SweepError(f"validation of {meta['name']}: {e}") from e
    count += 1
    say(f"eval {meta['name']}: validation loss {r['loss']:.4f} over {r['tokens']:,.0f} target "
        f"tokens ({r['batches']} batches, {time.monotonic() - t0:.1f} s)")
  return count


def heldout_run(out_dir: str, family: Family, base: Base, num_layers: int | None = 2,
                aspect_ratio: float | None = None, factor: float = HELDOUT_FACTOR,
                bootstrap: int = HELDOUT_BOOTSTRAP) -> tuple[RunSpec, dict]:
  """The run that tests the sweep's fit: at `factor` × the largest iso-FLOP budget, the size the
  fitted N_opt(C) picks, its loss predicted from L(N, D) with a bootstrap interval. Sized and
  predicted once, before it trains, into OUT_DIR/heldout.json; a rerun reads that back.
  Returns the run and what heldout.json holds."""
  path = os.path.join(out_dir, 'heldout.json')
  saved = read_json(path)
  if saved is None:
    columns = isoflop_columns(collect(out_dir))
    try:
      iso = fit_isoflop(*columns, bootstrap=0)
    except ValueError as e:
      raise SweepError(f'no held-out run: {e}') from e
    budget = factor * max(iso['budgets'])
    d_model = closest_size(family, base, compute_optimal(iso, budget)[0], num_layers,
                           aspect_ratio)
    _, _, n, flops_per_step = size_of(family, d_model, base, num_layers, aspect_ratio)
    steps = int(round(budget / flops_per_step))
    say(f'Held-out run: budget {budget:.3g} FLOPs ({factor:g}x the largest fitted), predicting '
        f'its loss from {bootstrap} bootstrap refits...')
    prediction = predict_compute_optimal_loss(
        *columns, budget, at=(n, steps * base.tokens_per_step), bootstrap=bootstrap)
    saved = {'budget': budget, 'factor': factor, 'fitted_budgets': iso['budgets'],
             'a': iso['a'], 'b': iso['b'], 'n_opt': prediction['n_opt'],
             'd_opt': prediction['d_opt'], 'd_model': d_model, 'steps': steps,
             'non_embedding_params': n, 'tokens': steps * base.tokens_per_step,
             'predicted_loss': prediction['loss'], 'interval': prediction['interval'],
             'bootstrap': prediction['bootstrap'], 'written': time.strftime('%Y-%m-%d %H:%M:%S')}
    write_json(path, saved)
  fields, total, non_embedding, flops_per_step = size_of(family, saved['d_model'], base,
                                                         num_layers, aspect_ratio)
  return RunSpec(f"{HELDOUT}_d{saved['d_model']:04d}_l{fields['num_decoder_layers']}_"
                 f"s{saved['steps']:06d}", saved['d_model'], fields, saved['steps'], total,
                 non_embedding, flops_per_step, base.tokens_per_step,
                 f"{HELDOUT}={saved['budget']:g}"), saved
