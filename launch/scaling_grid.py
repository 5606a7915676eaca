"""A scaling sweep's grid: model families and the size each d_model gives, the runs a set of
budgets (steps, tokens or iso-FLOP) buys, each run's gin file, and where runs live in OUT_DIR."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
from typing import Sequence

import numpy as np

from t5x_lite import curves  # metrics.jsonl rows; no JAX import
from t5x_lite.launch.common import UsageError

BASE_GIN = 'gin/runs/scaling.gin'
# The causal LM, not T5.1.1 span corruption: on offline_english the span-corruption runs each drop
# 0.2-0.25 nats at a size- and schedule-dependent step, so their iso-FLOP profiles zigzag
# (bench/results/scaling_default_v11/); the causal LM's curves are smooth, all three minima fall
# inside their windows and the held-out run lands within 1.04%
# (bench/results/scaling_default_decoder/).
DEFAULT_FAMILY = 'decoder_only'
DEFAULT_SIZES = (8, 16, 24, 32, 48, 64, 96, 128)  # d_model: ~250x in non-embedding params
DEFAULT_FLOPS = (1.6e11, 5e11, 1.6e12, 5e12)     # iso-FLOP budgets of the default sweep: 31x
DEFAULT_WINDOW = 5                           # sizes per iso-FLOP budget (--sizes_per_budget)
# Pieces; the model's embedding rows add T5's 100 sentinels, padded. 1,024 rather than 4,000:
# the output layer is then a smaller share of a tiny model's FLOPs, and the 2026-12-06 sweeps placed
# 2 of 3 iso-FLOP minima inside their windows (4,000: 1 of 3).
DEFAULT_VOCAB_SIZE = 1024
SIZE_STEP = 8              # d_model values are multiples of this
MIN_STEPS = 20             # an iso-FLOP budget that buys fewer steps than this skips the size
CORPORA = {'wiki': 'wiki_sample', 'english': 'offline_english'}  # --corpus -> offline corpus
# Size fields the sweep sets; binding them after `--` would silently change every run.
SIZE_FIELDS = ('d_model', 'num_heads', 'd_kv', 'd_ff', 'num_encoder_layers', 'num_decoder_layers')
# Parameters Kaplan et al. leave out of N: token embedding, output layer, position embeddings.
EMBEDDING_PARAMS = ('token_embedder', 'lm_head', 'relpos_bias')


class SweepError(RuntimeError):
  """A run failed; main() prints the message and exits 1."""


def say(message: str) -> None:
  print(message, flush=True)


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


def run_dirs(out_dir: str) -> list[str]:
  root = os.path.join(out_dir, 'runs')
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  return [os.path.join(root, n) for n in names
          if os.path.isfile(os.path.join(root, n, 'run.json'))]


def gin_default_pieces() -> int:
  """The pieces of the vocabulary the gin files use by default (the bundled corpus's)."""
  from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
  return vocab.DEFAULT_VOCAB_SIZE
