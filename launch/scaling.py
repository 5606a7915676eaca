"""Scaling-law sweeps: train one model family at several sizes and fit L(N) = E + A·N^(-α).

    python launch/scaling.py run --out_dir=DIR [--family=t5_1_1] [--sizes=32,64,96,128,192] \
        [--steps=600 | --tokens=2e5,4e5 | --flops=2e13,4e13] [--num_layers=2 | --aspect_ratio=64] \
        [--vocab_size=1024] [--corpus=wiki|english] [--heldout=4] [--mode=local|slurm|tpu] \
        [--dry_run] [-- extra train flags]
    python launch/scaling.py plan ...               # the grid, parameter counts, FLOPs, time estimate
    python launch/scaling.py report --out_dir=DIR   # evaluate, collect, fit and plot existing runs

One size knob, d_model, sets each model's shape (Kaplan et al. 2020: loss depends on the
non-embedding parameter count N far more than on shape): num_heads = d_model / d_kv, d_ff =
ff_ratio · d_model, and a fixed depth (or depth = d_model / aspect_ratio). Every run gets a small
readable gin file, RUN_DIR/run.gin, that includes gin/runs/scaling.gin (the shared recipe) and sets
the size, TRAIN_STEPS and MODEL_DIR, so any run can be rerun by hand with
`python -m t5x_lite.train --gin_file=RUN_DIR/run.gin`.

Data: `--steps` (fixed steps × batch × lengths tokens), `--tokens` (budgets in tokens, inputs plus
targets) or `--flops` (iso-FLOP: each size gets the steps that budget buys). With two or more token
budgets the report also fits L(N, D) = E + A·N^(-α) + B·D^(-β) (Hoffmann et al. 2022).

Local runs go one after another as `python -m t5x_lite.train` subprocesses with progress and an
ETA for the sweep. A run is complete when RUN_DIR/done.json exists; rerunning the same command
skips complete runs and reruns a partial one with the same command, which resumes from its
checkpoint. Ctrl-C (or SIGTERM) lets the current run save and stops the sweep. `--mode=slurm|tpu`
writes one job per run through launch/slurm.py / launch/tpu.py instead (OUT_DIR must then be on a
filesystem the jobs see); `report` collects them afterwards.

The loss fitted is the validation loss: after training, each run's last checkpoint scores the
task's whole validation split (the same packed examples for every size), in nats per target
token without z-loss; it is logged to metrics.jsonl as `eval/<task>/loss`. A run without it
falls back to the mean training cross-entropy of its last logged steps (the CSV says which).
Outputs in OUT_DIR: results.csv, scaling.png (points, fit, residuals), report.md, summary.json.
With 2+ `--flops` budgets: iso-FLOP profiles (each budget's minimum over N, N_opt ∝ C^a and
D_opt ∝ C^b with bootstrap intervals, isoflop.png), and a held-out run at `--heldout` (4) × the
largest budget, sized by the fitted N_opt and its loss predicted from L(N, D) into heldout.json
before it trains (local mode; on a cluster, rerun `run` locally once the grid is done). The fits
are in launch/scaling_fit.py, the plots and report.md in launch/scaling_report.py.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

import t5x_lite  # noqa: F401  (before JAX: quiet start-up, CPU on a host without chips)
from t5x_lite import curves  # metrics.jsonl rows; no JAX import
from t5x_lite.launch.common import UsageError, split_argv, usage_error
from t5x_lite.launch.scaling_fit import (HELDOUT, compute_optimal, fit_isoflop, fit_rows,
                                         isoflop_columns, predict_compute_optimal_loss)
from t5x_lite.launch.scaling_report import (isoflop_markdown, plot, plot_isoflop, report_markdown,
                                            si, unbracketed_minima)
from t5x_lite.progress import format_seconds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE_GIN = 'gin/runs/scaling.gin'
DEFAULT_SIZES = (8, 16, 24, 32, 48, 64, 96)  # d_model: ~500x in non-embedding params
DEFAULT_FLOPS = (5e11, 1.6e12, 5e12)         # iso-FLOP budgets of the default sweep: 10x
DEFAULT_WINDOW = 5                           # sizes per iso-FLOP budget (--sizes_per_budget)
# Pieces; the model's embedding rows add T5's 100 sentinels, padded. 1,024 rather than 4,000:
# the output layer is then a smaller share of a tiny model's FLOPs, and the 2026-12-06 sweeps placed
# 2 of 3 iso-FLOP minima inside their windows (4,000: 1 of 3).
DEFAULT_VOCAB_SIZE = 1024
LAST_K = 5                 # training-loss fallback: mean over this many last logged steps
SIZE_STEP = 8              # d_model values are multiples of this
MIN_STEPS = 20             # an iso-FLOP budget that buys fewer steps than this skips the size
CORPORA = {'wiki': 'wiki_sample', 'english': 'offline_english'}  # --corpus -> offline corpus
HELDOUT_FACTOR = 4.0       # the held-out run's budget, over the largest fitted one
HELDOUT_BOOTSTRAP = 100    # refits behind its prediction interval
# Size fields the sweep sets; binding them after `--` would silently change every run.
SIZE_FIELDS = ('d_model', 'num_heads', 'd_kv', 'd_ff', 'num_encoder_layers', 'num_decoder_layers')
# Parameters Kaplan et al. leave out of N: token embedding, output layer, position embeddings.
EMBEDDING_PARAMS = ('token_embedder', 'lm_head', 'relpos_bias')


class SweepError(RuntimeError):
  """A run failed; main() prints the message and exits 1."""


def say(message: str) -> None:
  print(message, flush=True)


# ------------------------------------------------------------------------------- model families


@dataclasses.dataclass(frozen=True)
class Family:
  """How the size knob shapes one family, and the gin bindings that fix the rest of it."""
  description: str
  bindings: tuple[str, ...]
  d_kv: int = 32
  ff_ratio: float = 3.0
  decoder_only: bool = False


FAMILIES = {
    't5_1_1': Family('T5.1.1 encoder-decoder: gated-GELU MLP, untied output layer', (
        "t5x_lite.models.T5Config.mlp_activations = ('gelu', 'linear')",
        't5x_lite.models.T5Config.logits_via_embedding = False')),
    't5_1_0': Family('T5 v1.0 encoder-decoder: ReLU MLP, output layer tied to the embedding', (
        "t5x_lite.models.T5Config.mlp_activations = ('relu',)",
        't5x_lite.models.T5Config.logits_via_embedding = True'), ff_ratio=4.0),
    'decoder_only': Family('causal LM (the decoder stack, GPT-style) on wiki_full_lm', (
        "t5x_lite.models.T5Config.architecture = 'decoder_only'",
        "t5x_lite.models.T5Config.mlp_activations = ('gelu',)",
        't5x_lite.models.T5Config.logits_via_embedding = True',
        "MIXTURE_OR_TASK_NAME = 'wiki_full_lm'",
        "TASK_FEATURE_LENGTHS = {'targets': 80}"), ff_ratio=4.0, decoder_only=True),
}


def model_fields(family: Family, d_model: int, num_layers: int | None = 2,
                 aspect_ratio: float | None = None) -> dict[str, int]:
  """The T5Config size fields of one family member: all follow from d_model, with heads of
  about d_kv (one head of d_model below it, so that models narrower than a head still exist).

  Depth is `num_layers` per stack, or d_model / aspect_ratio (Kaplan's fixed-shape sweeps).
  """
  if d_model <= 0 or d_model % SIZE_STEP:
    raise UsageError(f'size {d_model}: d_model must be a positive multiple of {SIZE_STEP}.')
  num_heads = max(1, round(d_model / family.d_kv))  # heads of about d_kv; one below it
  if d_model % num_heads:
    raise UsageError(f'size {d_model}: it does not split into {num_heads} heads of about '
                     f'd_kv = {family.d_kv}; use a multiple of {family.d_kv}.')
  if aspect_ratio:
    layers = max(1, round(d_model / aspect_ratio))
  elif num_layers and num_layers > 0:
    layers = num_layers
  else:
    raise UsageError(f'--num_layers must be >= 1 (or give --aspect_ratio), got {num_layers}.')
  return {'d_model': d_model, 'num_heads': num_heads, 'd_kv': d_model // num_heads,
          'd_ff': int(round(family.ff_ratio * d_model)),
          'num_encoder_layers': 0 if family.decoder_only else layers,
          'num_decoder_layers': layers}


def count_parameters(config) -> tuple[int, int]:
  """(total, non-embedding) parameters of a T5Config, from the abstract model (no allocation)."""
  import jax  # pylint: disable=import-outside-toplevel
  from t5x_lite import trainer  # pylint: disable=import-outside-toplevel
  _, params, _ = trainer.abstract_params_and_axes(config)
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(leaf.shape))
    total += size
    if any(str(getattr(k, 'key', '')) in EMBEDDING_PARAMS for k in path):
      embedding += size
  return total, total - embedding


# ------------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Base:
  """What the base gin (plus family bindings and extra flags) fixes for every run."""
  config: object            # T5Config before the size fields are set
  batch_size: int
  task_feature_lengths: dict
  task: str
  warmup_steps: int = 0     # of a linear_warmup_cosine schedule: every run must be longer

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * sum(self.task_feature_lengths.values())


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the sweep: a model size and a number of steps, with what they cost."""
  name: str
  d_model: int
  fields: dict
  steps: int
  params: int
  non_embedding_params: int
  flops_per_step: float
  tokens_per_step: int
  budget: str               # the group it belongs to in the fits, e.g. 'steps=300'

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  @property
  def flops(self) -> float:
    return self.steps * self.flops_per_step


def parse_budgets(steps: str | None, tokens: str | None, flops: str | None) -> tuple[str, list]:
  """('steps'|'tokens'|'flops', values) from the one budget flag given (default: the default
  sweep's iso-FLOP budgets)."""
  given = [(k, v) for k, v in (('steps', steps), ('tokens', tokens), ('flops', flops)) if v]
  if len(given) > 1:
    raise UsageError('give one of --steps, --tokens, --flops (got '
                     f'{", ".join("--" + k for k, _ in given)}).')
  kind, text = given[0] if given else ('flops', ','.join(f'{b:g}' for b in DEFAULT_FLOPS))
  try:
    values = [float(v) for v in text.split(',') if v.strip()]
  except ValueError as e:
    raise UsageError(f'--{kind}={text}: expected comma-separated numbers, e.g. 2e5,4e5.') from e
  if not values or any(not v > 0 for v in values):
    raise UsageError(f'--{kind}={text}: budgets must be positive numbers.')
  return kind, values


def size_of(family: Family, d_model: int, base: Base, num_layers: int | None = 2,
            aspect_ratio: float | None = None) -> tuple[dict, int, int, float]:
  """(size fields, parameters, non-embedding parameters, training FLOPs per step) of one size."""
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  fields = model_fields(family, d_model, num_layers, aspect_ratio)
  config = dataclasses.replace(base.config, **fields)
  total, non_embedding = count_parameters(config)
  return (fields, total, non_embedding,
          models.training_flops_per_example(config, base.task_feature_lengths) * base.batch_size)


def build_grid(family: Family, sizes: Sequence[int], budget_kind: str, budgets: Sequence[float],
               base: Base, num_layers: int | None = 2,
               aspect_ratio: float | None = None,
               sizes_per_budget: int | None = None) -> list[RunSpec]:
  """Every (size, budget) run, smallest model first, with parameter counts and training FLOPs.

  With `sizes_per_budget` = K, each budget trains a window of K consecutive sizes that slides
  from the smallest sizes at the smallest budget to the largest at the largest, as iso-FLOP
  profiles are laid out around an optimum that grows with compute (Hoffmann et al. 2022): a
  small model at a large budget would spend most of the sweep's time far from any minimum.
  """
  sizes, budgets = sorted(set(sizes)), sorted(budgets)
  window = {b: sizes for b in budgets}
  if sizes_per_budget:
    if not 3 <= sizes_per_budget <= len(sizes):
      raise UsageError(f'--sizes_per_budget={sizes_per_budget}: needs 3 to {len(sizes)} '
                       '(the number of --sizes) to place a minimum.')
    spare = len(sizes) - sizes_per_budget
    for i, b in enumerate(budgets):
      start = round(i * spare / (len(budgets) - 1)) if len(budgets) > 1 else spare // 2
      window[b] = sizes[start:start + sizes_per_budget]
  specs = []
  for d_model in sizes:
    fields, total, non_embedding, flops_per_step = size_of(family, d_model, base, num_layers,
                                                           aspect_ratio)
    for budget in (b for b in budgets if d_model in window[b]):
      if budget_kind == 'steps':
        steps = int(budget)
      elif budget_kind == 'tokens':
        steps = int(round(budget / base.tokens_per_step))
      else:
        steps = int(round(budget / flops_per_step))
      if steps < (MIN_STEPS if budget_kind == 'flops' else 1):
        say(f'(skipping d_model {d_model} at {budget_kind}={budget:g}: it buys {steps} steps)')
        continue
      name = f"d{d_model:04d}_l{fields['num_decoder_layers']}_s{steps:06d}"
      specs.append(RunSpec(name, d_model, fields, steps, total, non_embedding, flops_per_step,
                           base.tokens_per_step, f'{budget_kind}={budget:g}'))
  if len({s.non_embedding_params for s in specs}) < 2:
    raise UsageError('the grid needs at least two model sizes to fit a scaling law.')
  short = [s for s in specs if s.steps <= base.warmup_steps]
  if short:
    raise UsageError(
        f'{short[0].name} trains {short[0].steps} steps, no more than the learning-rate warm-up '
        f'({base.warmup_steps} steps, learning_rate_schedule.warmup_steps); raise the budget or '
        'pass -- --gin.learning_rate_schedule.warmup_steps=K with K below every run\'s steps.')
  return specs


def check_extra_flags(extra: Sequence[str]) -> None:
  """Flags after `--` may change the recipe, not what the sweep itself sets per run."""
  owned = SIZE_FIELDS + ('TRAIN_STEPS', 'MODEL_DIR')
  for flag in extra:
    name = flag[len('--gin.'):].split('=', 1)[0] if flag.startswith('--gin.') else ''
    if name.split('.')[-1] in owned:
      raise UsageError(f'{flag}: the sweep sets {name.split(".")[-1]} for each run; choose sizes '
                       'with --sizes/--num_layers and budgets with --steps/--tokens/--flops.')


def read_base(base_gin: str, family: Family, extra: Sequence[str], vocab_size: int | None) -> Base:
  """Parses the base gin with the family's bindings and the extra flags, as each run will."""
  import gin  # pylint: disable=import-outside-toplevel
  from t5x_lite import gin_utils  # pylint: disable=import-outside-toplevel
  files, bindings, _ = gin_utils.split_flags(list(extra))
  gin.clear_config()
  try:
    gin_utils.parse([base_gin, *files], list(family.bindings) + bindings)
    config = gin_utils.query_macro('MODEL_CONFIG')
    base = Base(config, int(gin_utils.query_macro('BATCH_SIZE')),
                dict(gin_utils.query_macro('TASK_FEATURE_LENGTHS')),
                str(gin_utils.query_macro('MIXTURE_OR_TASK_NAME')), _cosine_warmup(gin))
  except gin_utils.UsageError as e:
    raise UsageError(str(e)) from e
  finally:
    gin.clear_config()
  if vocab_size:
    base = dataclasses.replace(base, config=dataclasses.replace(
        config, vocab_size=model_vocab_size(vocab_size)))
  return base


def _cosine_warmup(gin) -> int:
  """The warm-up steps of a linear_warmup_cosine schedule as gin binds them, else 0."""
  def bound(name, default):
    try:
      return gin.query_parameter(f'learning_rate_schedule.{name}')
    except ValueError:
      return default
  return int(bound('warmup_steps', 0)) if bound('kind', '') == 'linear_warmup_cosine' else 0


def model_vocab_size(pieces: int) -> int:
  """Embedding rows for a vocabulary of `pieces` plus T5's 100 sentinels, padded to 128 (as T5)."""
  return -(-(pieces + 100) // 128) * 128


def prepare_vocabulary(out_dir: str, pieces: int, dry_run: bool = False,
                       corpus_name: str = 'wiki_sample') -> str:
  """A SentencePiece model of `pieces` trained on an offline corpus (cached once per machine by
  t5x_lite.vocab), copied into OUT_DIR so that cluster jobs find it; returns its path."""
  from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
  dest = os.path.join(out_dir, 'vocab',
                      os.path.basename(vocab.default_spm_path(pieces, corpus_name)))
  if dry_run or os.path.isfile(dest):
    return dest
  try:
    source = vocab.ensure_default_spm(pieces, corpus_name)
  except ValueError as e:
    raise UsageError(f'--vocab_size={pieces}: {e}') from e
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  shutil.copyfile(source, dest + '.tmp')
  os.replace(dest + '.tmp', dest)
  return dest


def run_gin(spec: RunSpec, family_name: str, run_dir: str, base_gin: str,
            vocab_bindings: Sequence[str], train_flags: Sequence[str] = ()) -> str:
  """The text of RUN_DIR/run.gin: the shared recipe plus this run's size and length."""
  command = shlex.join(['.venv/bin/python', '-m', 't5x_lite.train',
                        f'--gin_file={run_dir}/run.gin', *train_flags])
  lines = [
      f'# Scaling sweep run {spec.name} (written by launch/scaling.py; family {family_name}):',
      f'# {spec.non_embedding_params:,} non-embedding / {spec.params:,} parameters, '
      f'{spec.steps} steps x {spec.tokens_per_step:,} tokens = {spec.tokens:,} tokens, '
      f'{spec.flops:.3g} training FLOPs.',
      '# Rerun or resume it by hand from the repository root:',
      f'#   {command}',
      f"include '{base_gin}'",
      '',
      *FAMILIES[family_name].bindings,
      *vocab_bindings,
      '',
      *(f't5x_lite.models.T5Config.{k} = {v}' for k, v in spec.fields.items()),
      f'TRAIN_STEPS = {spec.steps}',
      f'MODEL_DIR = {run_dir!r}',
      '',
  ]
  return '\n'.join(lines)


# ------------------------------------------------------------------------------- sweep state


def run_dir_of(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, 'runs', name)


def read_json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def write_json(path: str, value) -> None:
  """Written to a sibling and renamed, so a killed sweep never leaves half a state file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)


def last_train_step(run_dir: str) -> int:
  rows = [r for r in curves.read_metrics(os.path.join(run_dir, 'metrics.jsonl')) if 'loss' in r]
  return max((int(r['step']) for r in rows), default=0)


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


# ------------------------------------------------------------------------------- running locally


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


# ------------------------------------------------------------------------------- cluster jobs


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


# ------------------------------------------------------------------------------- evaluation


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


def eval_loss(rows: Sequence[dict], step: int) -> float | None:
  """The validation loss logged at `step` (the last one if logged twice), or None."""
  found = None
  for r in rows:
    if int(r.get('step', -1)) == step:
      for k, v in r.items():
        if k.startswith('eval/') and k.endswith('/loss'):
          found = float(v)
  return found


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


# ------------------------------------------------------------------------------- held-out run


def closest_size(family: Family, base: Base, n_target: float, num_layers: int | None = 2,
                 aspect_ratio: float | None = None, limit: int = 8192) -> int:
  """The d_model (a multiple of SIZE_STEP that splits into heads) whose non-embedding parameter
  count is nearest `n_target` in log space; N grows with d_model, so the search stops once it
  passes the target."""
  best, best_gap = SIZE_STEP, math.inf
  for d_model in range(SIZE_STEP, limit + 1, SIZE_STEP):
    try:
      n = size_of(family, d_model, base, num_layers, aspect_ratio)[2]
    except UsageError:  # no whole number of heads
      continue
    gap = abs(math.log(n / n_target))
    if gap < best_gap:
      best, best_gap = d_model, gap
    if n >= n_target:
      break
  return best


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


# ------------------------------------------------------------------------------- collect


def run_dirs(out_dir: str) -> list[str]:
  root = os.path.join(out_dir, 'runs')
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  return [os.path.join(root, n) for n in names
          if os.path.isfile(os.path.join(root, n, 'run.json'))]


CSV_FIELDS = ('name', 'family', 'budget', 'd_model', 'num_layers', 'num_heads', 'd_ff', 'params',
              'non_embedding_params', 'steps', 'tokens', 'flops', 'step_reached', 'train_loss',
              'eval_loss', 'loss', 'loss_source', 'seconds_per_step', 'wall_s', 'complete')


def collect(out_dir: str, last_k: int = LAST_K) -> list[dict]:
  """One row per run directory: its size and budget, and the losses its metrics.jsonl holds."""
  rows = []
  for run_dir in run_dirs(out_dir):
    meta = read_json(os.path.join(run_dir, 'run.json'))
    metrics = curves.read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    train = sorted((r for r in metrics if 'loss' in r), key=lambda r: r['step'])
    tail = [r.get('cross_ent_loss', r['loss']) for r in train[-last_k:]]
    reached = int(train[-1]['step']) if train else 0
    done = read_json(os.path.join(run_dir, 'done.json'), {})
    complete = reached >= meta['steps']
    train_loss = float(np.mean(tail)) if tail else float('nan')
    val = eval_loss(metrics, meta['steps']) if complete else None
    rows.append({
        'name': meta['name'], 'family': meta['family'], 'budget': meta['budget'],
        'd_model': meta['d_model'], 'num_layers': meta['fields']['num_decoder_layers'],
        'num_heads': meta['fields']['num_heads'], 'd_ff': meta['fields']['d_ff'],
        'params': meta['params'], 'non_embedding_params': meta['non_embedding_params'],
        'steps': meta['steps'], 'tokens': meta['tokens'], 'flops': meta['flops'],
        'step_reached': reached, 'train_loss': train_loss,
        'eval_loss': float('nan') if val is None else val,
        'loss': train_loss if val is None else val,
        'loss_source': 'validation' if val is not None else f'train (last {len(tail)} logged)',
        'seconds_per_step': done.get('seconds_per_step', float('nan')),
        'wall_s': done.get('wall_s', float('nan')), 'complete': complete})
  return rows


# ------------------------------------------------------------------------------- report files


def write_csv(rows: Sequence[dict], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r[k] for k in CSV_FIELDS})


def write_report(out_dir: str, last_k: int = LAST_K) -> dict:
  """Collects OUT_DIR's runs, fits them and writes results.csv, scaling.png, report.md,
  summary.json and, for an iso-FLOP sweep, isoflop.png."""
  rows = collect(out_dir, last_k)
  if not rows:
    raise UsageError(f'no runs in {out_dir}/runs; start one with `launch/scaling.py run`.')
  fits = fit_rows(rows)
  sweep = read_json(os.path.join(out_dir, 'sweep.json'), {})
  write_csv(rows, os.path.join(out_dir, 'results.csv'))
  what = ' on '.join(v for v in (sweep.get('family'), sweep.get('task')) if v) or 'scaling sweep'
  plot(rows, fits, os.path.join(out_dir, 'scaling.png'), f'{what}: loss vs N')
  iso = fits.get('isoflop')
  heldout = read_json(os.path.join(out_dir, 'heldout.json'))
  summary = write_summary(out_dir, rows, fits, sweep, heldout)
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join([report_markdown(rows, fits, sweep),
                       *isoflop_markdown(iso, heldout, summary)]))
  if iso and 'a' in iso:
    plot_isoflop(rows, iso, heldout, summary['heldout_loss'],
                 os.path.join(out_dir, 'isoflop.png'), f'{what}: iso-FLOP profiles')
    say(f"iso-FLOP fit over {len(iso['budgets'])} budgets: N_opt ∝ C^{iso['a']:.3f} "
        f"(68% {iso['a_interval'][0]:.3f}..{iso['a_interval'][1]:.3f}), D_opt ∝ "
        f"C^{iso['b']:.3f} (68% {iso['b_interval'][0]:.3f}..{iso['b_interval'][1]:.3f})")
    for phrase in unbracketed_minima(iso):
      say(f'warning: {phrase}.')
  elif iso:
    say(f"iso-FLOP fit: {iso['error']}")
  if summary['heldout_loss'] is not None:
    say(f"Held-out run: predicted {summary['heldout_predicted_loss']:.4f}, measured "
        f"{summary['heldout_loss']:.4f} ({summary['heldout_rel_error']:+.2%}).")
  for g, fit in fits['groups'].items():
    low_high = fit.get('alpha_range')
    profile = f' (68% range {low_high[0]:.3g}..{low_high[1]:.3g})' if low_high else ''
    say(f'L(N) fit, {g}: alpha={fit["alpha"]:.4f}{profile} E={fit["E"]:.4f} A={fit["A"]:.4g} '
        f'R2={fit["r2"]:.4f} ({fit["points"]} runs)')
  if fits['joint']:
    j = fits['joint']
    say(f'L(N,D) fit: alpha={j["alpha"]:.4f} beta={j["beta"]:.4f} E={j["E"]:.4f} '
        f'R2={j["r2"]:.4f}')
  say(f"Wrote {out_dir}/results.csv, scaling.png{', isoflop.png' if iso and 'a' in iso else ''}, "
      'report.md and summary.json.')
  return fits


def write_summary(out_dir: str, rows: Sequence[dict], fits: dict, sweep: dict,
                  heldout: dict | None) -> dict:
  """OUT_DIR/summary.json: the figures a sweep is judged by, for scripts (None where not known).
  `heldout`: what OUT_DIR/heldout.json holds, if anything."""
  iso = fits.get('isoflop') or {}
  held = heldout or {}
  measured = next((r['eval_loss'] for r in rows if r['budget'].startswith(HELDOUT + '=')
                   and r['complete'] and math.isfinite(r['eval_loss'])), None)
  predicted = held.get('predicted_loss')
  summary = {
      'a': iso.get('a'), 'a_interval': iso.get('a_interval'),
      'b': iso.get('b'), 'b_interval': iso.get('b_interval'),
      'isoflop_budgets': iso.get('budgets'),
      'heldout_budget': held.get('budget'), 'heldout_predicted_loss': predicted,
      'heldout_interval': held.get('interval'), 'heldout_loss': measured,
      'heldout_rel_error': ((measured - predicted) / measured
                            if measured is not None and predicted is not None else None),
      'wall_s': (sweep.get('timing') or {}).get('total_s'),
      'corpus_tokens': sweep.get('corpus_tokens'),
      'runs_complete': sum(bool(r['complete']) for r in rows),
  }
  write_json(os.path.join(out_dir, 'summary.json'), summary)
  return summary


# ------------------------------------------------------------------------------- CLI


def plan_table(specs: Sequence[RunSpec], times: TimeModel) -> str:
  lines = [f"{'run':<20} {'d_model':>7} {'layers':>6} {'heads':>5} {'d_ff':>5} {'N':>9} "
           f"{'params':>9} {'steps':>6} {'tokens':>10} {'FLOPs':>9} {'est.':>7}"]
  for s in specs:
    lines.append(f"{s.name:<20} {s.d_model:>7} {s.fields['num_decoder_layers']:>6} "
                 f"{s.fields['num_heads']:>5} {s.fields['d_ff']:>5} "
                 f"{si(s.non_embedding_params):>9} {si(s.params):>9} {s.steps:>6} "
                 f"{s.tokens:>10,} {s.flops:>9.3g} {format_seconds(times.run_seconds(s)):>7}")
  n = [s.non_embedding_params for s in specs]
  lines.append(f'{len(specs)} runs, N from {si(min(n))} to {si(max(n))} '
               f'({max(n) / min(n):.0f}x); estimated '
               f'{format_seconds(sum(times.run_seconds(s) for s in specs))} of training here.')
  return '\n'.join(lines)


EVAL_SECONDS = (45.0, 10.0)  # validation, for the sweep ETA: start-up, then per run


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='launch/scaling.py', description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='command', required=True)
  for name in ('run', 'plan'):
    s = sub.add_parser(name)
    s.add_argument('--out_dir', required=name == 'run', default='/tmp/t5x_lite/scaling')
    s.add_argument('--family', default='t5_1_1', choices=sorted(FAMILIES))
    s.add_argument('--sizes', default=','.join(map(str, DEFAULT_SIZES)),
                   help=f'd_model values, comma-separated (multiples of {SIZE_STEP}; heads of '
                   'about 32)')
    s.add_argument('--sizes_per_budget', type=int, default=None,
                   help=f'iso-FLOP: each budget trains this many consecutive sizes, sliding up '
                   f'with the budget (default {DEFAULT_WINDOW} when --flops has 2+ budgets and '
                   f'there are more sizes; 0: every size at every budget)')
    s.add_argument('--num_layers', type=int, default=2, help='layers per stack (fixed depth)')
    s.add_argument('--aspect_ratio', type=float, default=None,
                   help='instead of --num_layers: layers = d_model / aspect_ratio')
    s.add_argument('--steps', help='steps per run, comma-separated')
    s.add_argument('--tokens', help='token budgets per run (inputs + targets), comma-separated')
    s.add_argument('--flops', help='iso-FLOP budgets: each size trains for budget / FLOPs per '
                   f"step (the default: {','.join(f'{b:g}' for b in DEFAULT_FLOPS)})")
    s.add_argument('--heldout', type=float, default=HELDOUT_FACTOR,
                   help='with 2+ --flops budgets: after the grid, train the size the fit calls '
                   'compute-optimal at this many times the largest budget and compare its loss '
                   'with the prediction (0: no held-out run)')
    s.add_argument('--corpus', default='english', choices=sorted(CORPORA),
                   help='offline text the runs train and validate on: wiki (the bundled 2.8 MB '
                   'Wikipedia sample) or english (offline_english, 53.8 MB)')
    s.add_argument('--vocab_size', type=int, default=DEFAULT_VOCAB_SIZE,
                   help='SentencePiece pieces trained on the sweep\'s corpus; 0 keeps the gin\'s '
                   'vocabulary')
    s.add_argument('--base_gin', default=BASE_GIN)
    s.add_argument('--mode', default='local', choices=('local', 'slurm', 'tpu'))
    s.add_argument('--dry_run', action='store_true', help='print the plan and what would be '
                   'written or run; write and run nothing')
    s.add_argument('--eval_batches', type=int, default=0, help='cap on validation batches (0: all)')
    s.add_argument('--last_k', type=int, default=LAST_K)
    s.add_argument('--job_prefix', default='scaling')
    s.add_argument('--nodes', type=int, default=1)
    s.add_argument('--gpus_per_node', type=int, default=1)
    s.add_argument('--time', default='04:00:00')
    s.add_argument('--partition')
    s.add_argument('--account')
    s.add_argument('--accelerator_type', default='v5litepod-1')
    s.add_argument('--zone')
    s.add_argument('--project')
    s.add_argument('--repo_url')
  for name in ('report', 'evaluate'):
    s = sub.add_parser(name)
    s.add_argument('--out_dir', required=True)
    s.add_argument('--eval_batches', type=int, default=0)
    s.add_argument('--last_k', type=int, default=LAST_K)
    if name == 'report':
      s.add_argument('--skip_eval', action='store_true',
                     help='fit what is there; runs without a validation loss use training loss')
  return p


def _evaluate_in_subprocess(out_dir: str, eval_batches: int) -> None:
  """Validation runs in its own process: this one never imports a device runtime for it."""
  command = [sys.executable, os.path.abspath(__file__), 'evaluate', f'--out_dir={out_dir}',
             f'--eval_batches={eval_batches}']
  log = os.path.join(out_dir, 'eval.log')

  def show(line: str) -> None:
    if line.startswith('eval ') or 'error' in line:
      say(line.rstrip())

  status = SubprocessRunner()(command, log, show)
  if status:
    raise SweepError(f'validation exited with status {status}; see {log}.')


def run(args, extra: Sequence[str]) -> int:
  t_start = time.monotonic()
  family = FAMILIES[args.family]
  check_extra_flags(extra)
  budget_kind, budgets = parse_budgets(args.steps, args.tokens, args.flops)
  try:
    sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
  except ValueError as e:
    raise UsageError(f'--sizes={args.sizes}: expected comma-separated ints.') from e
  out_dir = os.path.abspath(args.out_dir)
  corpus_name = CORPORA[args.corpus]
  # The gin's default vocabulary is the bundled corpus's; another corpus gets its own.
  own_vocab = bool(args.vocab_size) and (args.vocab_size != _default_pieces()
                                         or args.corpus != 'wiki')
  base = read_base(args.base_gin, family, extra, args.vocab_size if own_vocab else None)
  data_bindings = []
  if args.corpus != 'wiki':
    if not base.task.startswith('wiki_'):
      raise UsageError(f'--corpus={args.corpus} replaces the wiki_* task, but the runs train on '
                       f'{base.task}; drop --corpus or the MIXTURE_OR_TASK_NAME binding.')
    base = dataclasses.replace(base, task=f"{args.corpus}_{base.task[len('wiki_'):]}")
    data_bindings = [f'MIXTURE_OR_TASK_NAME = {base.task!r}']
  window = args.sizes_per_budget
  if window is None:
    window = DEFAULT_WINDOW if (budget_kind == 'flops' and len(budgets) > 1
                                and len(set(sizes)) > DEFAULT_WINDOW) else 0
  specs = build_grid(family, sizes, budget_kind, budgets, base, args.num_layers, args.aspect_ratio,
                     window or None)
  say(f'Sweep: {args.family} ({family.description}) on {base.task}, batch {base.batch_size}, '
      f'lengths {base.task_feature_lengths}, vocabulary {base.config.vocab_size} rows.')
  sweep = Sweep(out_dir, specs)
  say(plan_table(specs, sweep.times))
  if args.command == 'plan':
    return 0
  vocab_bindings = list(data_bindings)
  if own_vocab:
    if not args.dry_run:
      say(f'Vocabulary: {args.vocab_size} SentencePiece pieces on {corpus_name} '
          '(trained once per machine, then cached).')
    spm = prepare_vocabulary(out_dir, args.vocab_size, dry_run=args.dry_run,
                             corpus_name=corpus_name)
    vocab_bindings += [f'VOCAB_SIZE = {base.config.vocab_size}',
                       f'get_vocabulary.spm_path = {spm!r}']
  corpus_tokens = None
  if own_vocab and not args.dry_run:
    from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
    corpus_tokens = vocab.corpus_tokens(spm, corpus_name)
    say(f'Corpus: {corpus_name}, {corpus_tokens:,} training tokens; the longest run reads '
        f'{max(s.tokens for s in specs) / corpus_tokens:.2f} epochs of them (inputs + targets).')
  train_flags = list(extra)
  if args.dry_run:
    for s in specs:
      run_dir = run_dir_of(out_dir, s.name)
      say(f'--- {run_dir}/run.gin\n' + run_gin(s, args.family, run_dir, args.base_gin,
                                                  vocab_bindings, train_flags))
    if args.mode != 'local':
      for path, text in cluster_jobs(out_dir, specs, args.mode, train_flags, args).items():
        say(f'--- {path}\n{text}')
    else:
      for s in specs:
        say(shlex.join(train_command(run_dir_of(out_dir, s.name), train_flags)))
    return 0
  os.makedirs(out_dir, exist_ok=True)
  state_path = os.path.join(out_dir, 'sweep.json')
  old = read_json(state_path, {})
  if old.get('family') not in (None, args.family):
    raise UsageError(f"{out_dir} holds a {old['family']} sweep; use a new --out_dir for "
                     f'{args.family} (one family per fit).')
  state = {'family': args.family, 'task': base.task, 'mode': args.mode,
           'command': shlex.join(['launch/scaling.py', *args.argv]), 'timing': old.get('timing'),
           'corpus_tokens': corpus_tokens or old.get('corpus_tokens')}
  write_json(state_path, state)
  write_run_files(out_dir, specs, args.family, args.base_gin, vocab_bindings, train_flags)
  if args.mode != 'local':
    files = cluster_jobs(out_dir, specs, args.mode, train_flags, args)
    for path, text in files.items():
      with open(path, 'w') as f:
        f.write(text)
      os.chmod(path, 0o755)
    say(f'Wrote {len(files) - 1} {args.mode} job files; start them all with '
        f'`bash {os.path.join(out_dir, "submit_all.sh")}`, then '
        f'`launch/scaling.py report --out_dir={out_dir}`.')
    return 0
  sweep.extra_seconds = EVAL_SECONDS[0] + EVAL_SECONDS[1] * len(specs)
  t_train = time.monotonic()
  if not sweep.train_all():
    return 130
  train_s = time.monotonic() - t_train
  t_eval = time.monotonic()
  _evaluate_in_subprocess(out_dir, args.eval_batches)
  eval_s = time.monotonic() - t_eval
  if budget_kind == 'flops' and args.heldout > 0 and len(budgets) >= 2:
    spec, held = heldout_run(out_dir, family, base, args.num_layers, args.aspect_ratio,
                             args.heldout)
    low_high = held['interval'] or [math.nan, math.nan]
    say(f"Held-out run {spec.name}: N={si(spec.non_embedding_params)} (fitted N_opt "
        f"{si(held['n_opt'])}), {spec.steps} steps; predicted loss {held['predicted_loss']:.4f} "
        f"(68% {low_high[0]:.4f}..{low_high[1]:.4f}).")
    write_run_files(out_dir, [spec], args.family, args.base_gin, vocab_bindings, train_flags)
    t_held = time.monotonic()
    heldout = Sweep(out_dir, [spec])
    if not heldout.train_all():
      return 130
    sweep.trained += heldout.trained
    t_eval_held = time.monotonic()
    _evaluate_in_subprocess(out_dir, args.eval_batches)
    train_s += t_eval_held - t_held
    eval_s += time.monotonic() - t_eval_held
  if sweep.trained:  # a rerun that only re-fits keeps the timing of the sweep that trained
    state['timing'] = {'train_s': train_s, 'eval_s': eval_s,
                       'total_s': time.monotonic() - t_start}
    write_json(state_path, state)
  write_report(out_dir, args.last_k)
  say(f'Sweep finished in {format_seconds(time.monotonic() - t_start)}.')
  return 0


def _default_pieces() -> int:
  from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
  return vocab.DEFAULT_VOCAB_SIZE


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  ours, extra = split_argv(argv)
  if ours and ours[0].startswith('-') and ours[0] not in ('-h', '--help'):
    ours = ['run'] + ours  # `launch/scaling.py --out_dir=D` means `run`
  try:
    args = _parser().parse_args(ours)
  except SystemExit as e:
    return int(e.code or 0)
  args.argv = argv
  try:
    if args.command in ('run', 'plan'):
      return run(args, extra)
    if extra:
      raise UsageError(f'{args.command} takes no train flags after --; got {extra}.')
    if args.command == 'evaluate':
      evaluate_pending(os.path.abspath(args.out_dir), args.eval_batches)
      return 0
    out_dir = os.path.abspath(args.out_dir)
    if not args.skip_eval:
      _evaluate_in_subprocess(out_dir, args.eval_batches)
    write_report(out_dir, args.last_k)
    return 0
  except UsageError as e:  # bad arguments or an inconsistent OUT_DIR
    return usage_error('launch/scaling.py', e)
  except SweepError as e:
    print(f'launch/scaling.py: error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
