"""Scaling-law sweeps: train one model family at several sizes and fit L(N) = E + A·N^(-α).

    python launch/scaling.py run --out_dir=DIR [--family=decoder_only|t5_1_1|t5_1_0] [--sizes=...] \
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
before it trains (local mode; on a cluster, rerun `run` locally once the grid is done).

This file is the command line; the grid is launch/scaling_grid.py, running it
launch/scaling_runner.py, the fits launch/scaling_fit.py, the rows, plots and report files
launch/scaling_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from typing import NamedTuple, Sequence

import t5x_lite  # noqa: F401  (before JAX: quiet start-up, CPU on a host without chips)
from t5x_lite.launch.common import UsageError, split_argv, usage_error
from t5x_lite.launch.scaling_grid import (BASE_GIN, CORPORA, DEFAULT_FAMILY, DEFAULT_FLOPS,
                                          DEFAULT_SIZES, DEFAULT_VOCAB_SIZE, DEFAULT_WINDOW,
                                          FAMILIES, SIZE_STEP, Base, build_grid, check_extra_flags,
                                          Family, gin_default_pieces, parse_budgets,
                                          prepare_vocabulary, read_base, read_json, run_dir_of,
                                          run_gin, RunSpec, say, SweepError, write_json)
from t5x_lite.launch.scaling_report import LAST_K, si, write_report
from t5x_lite.launch.scaling_runner import (HELDOUT_FACTOR, SubprocessRunner, Sweep, TimeModel,
                                            cluster_jobs, evaluate_pending, heldout_run,
                                            train_command, write_run_files)
from t5x_lite.progress import format_seconds

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
    s.add_argument('--family', default=DEFAULT_FAMILY, choices=sorted(FAMILIES),
                   help=f'model family (default {DEFAULT_FAMILY}: smooth iso-FLOP profiles here)')
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


class _Grid(NamedTuple):
  family: Family
  base: Base
  budget_kind: str
  budgets: list
  specs: list
  own_vocab: bool           # the runs get their own vocabulary (not the gin's default one)
  data_bindings: list       # gin bindings that point the runs at --corpus


def _grid(args, extra: Sequence[str]) -> _Grid:
  """The runs the arguments ask for (nothing is written)."""
  family = FAMILIES[args.family]
  check_extra_flags(extra)
  budget_kind, budgets = parse_budgets(args.steps, args.tokens, args.flops)
  try:
    sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
  except ValueError as e:
    raise UsageError(f'--sizes={args.sizes}: expected comma-separated ints.') from e
  # The gin's default vocabulary is the bundled corpus's; another corpus gets its own.
  own_vocab = bool(args.vocab_size) and (args.vocab_size != gin_default_pieces()
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
  return _Grid(family, base, budget_kind, budgets, specs, own_vocab, data_bindings)


def _vocabulary(args, out_dir: str, grid: _Grid) -> tuple[list, int | None]:
  """The runs' data and vocabulary bindings, and the corpus's training tokens (when counted)."""
  corpus_name = CORPORA[args.corpus]
  bindings = list(grid.data_bindings)
  if not grid.own_vocab:
    return bindings, None
  if not args.dry_run:
    say(f'Vocabulary: {args.vocab_size} SentencePiece pieces on {corpus_name} '
        '(trained once per machine, then cached).')
  spm = prepare_vocabulary(out_dir, args.vocab_size, dry_run=args.dry_run, corpus_name=corpus_name)
  bindings += [f'VOCAB_SIZE = {grid.base.config.vocab_size}', f'get_vocabulary.spm_path = {spm!r}']
  if args.dry_run:
    return bindings, None
  from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
  tokens = vocab.corpus_tokens(spm, corpus_name)
  say(f'Corpus: {corpus_name}, {tokens:,} training tokens; the longest run reads '
      f'{max(s.tokens for s in grid.specs) / tokens:.2f} epochs of them (inputs + targets).')
  return bindings, tokens


def _dry_run(args, out_dir: str, specs, bindings, train_flags) -> None:
  """Prints what `run` would write and start."""
  for s in specs:
    run_dir = run_dir_of(out_dir, s.name)
    say(f'--- {run_dir}/run.gin\n' + run_gin(s, args.family, run_dir, args.base_gin, bindings,
                                              train_flags))
  if args.mode != 'local':
    for path, text in cluster_jobs(out_dir, specs, args.mode, train_flags, args).items():
      say(f'--- {path}\n{text}')
  else:
    for s in specs:
      say(shlex.join(train_command(run_dir_of(out_dir, s.name), train_flags)))


def _write_cluster_jobs(args, out_dir: str, specs, train_flags) -> None:
  files = cluster_jobs(out_dir, specs, args.mode, train_flags, args)
  for path, text in files.items():
    with open(path, 'w') as f:
      f.write(text)
    os.chmod(path, 0o755)
  say(f'Wrote {len(files) - 1} {args.mode} job files; start them all with '
      f'`bash {os.path.join(out_dir, "submit_all.sh")}`, then '
      f'`launch/scaling.py report --out_dir={out_dir}`.')


def _sweep_state(args, out_dir: str, grid: _Grid, corpus_tokens: int | None) -> dict:
  """OUT_DIR/sweep.json, written anew (one family per OUT_DIR; an earlier timing is kept)."""
  os.makedirs(out_dir, exist_ok=True)
  old = read_json(os.path.join(out_dir, 'sweep.json'), {})
  if old.get('family') not in (None, args.family):
    raise UsageError(f"{out_dir} holds a {old['family']} sweep; use a new --out_dir for "
                     f'{args.family} (one family per fit).')
  state = {'family': args.family, 'task': grid.base.task, 'mode': args.mode,
           'command': shlex.join(['launch/scaling.py', *args.argv]), 'timing': old.get('timing'),
           'corpus_tokens': corpus_tokens or old.get('corpus_tokens')}
  write_json(os.path.join(out_dir, 'sweep.json'), state)
  return state


def run(args, extra: Sequence[str]) -> int:
  t_start = time.monotonic()
  out_dir = os.path.abspath(args.out_dir)
  grid = _grid(args, extra)
  say(f'Sweep: {args.family} ({grid.family.description}) on {grid.base.task}, batch '
      f'{grid.base.batch_size}, lengths {grid.base.task_feature_lengths}, vocabulary '
      f'{grid.base.config.vocab_size} rows.')
  sweep = Sweep(out_dir, grid.specs)
  say(plan_table(grid.specs, sweep.times))
  if args.command == 'plan':
    return 0
  bindings, corpus_tokens = _vocabulary(args, out_dir, grid)
  train_flags = list(extra)
  if args.dry_run:
    _dry_run(args, out_dir, grid.specs, bindings, train_flags)
    return 0
  state = _sweep_state(args, out_dir, grid, corpus_tokens)
  write_run_files(out_dir, grid.specs, args.family, args.base_gin, bindings, train_flags)
  if args.mode != 'local':
    _write_cluster_jobs(args, out_dir, grid.specs, train_flags)
    return 0
  return _train_locally(args, out_dir, grid, sweep, state, bindings, train_flags, t_start)


def _train_locally(args, out_dir: str, grid: _Grid, sweep: Sweep, state: dict, bindings,
                   train_flags, t_start: float) -> int:
  """Trains and validates every run here, then the held-out run (iso-FLOP sweeps), then writes
  the report; 130 when Ctrl-C stopped it (rerun to resume)."""
  sweep.extra_seconds = EVAL_SECONDS[0] + EVAL_SECONDS[1] * len(grid.specs)
  t_train = time.monotonic()
  if not sweep.train_all():
    return 130
  train_s = time.monotonic() - t_train
  t_eval = time.monotonic()
  _evaluate_in_subprocess(out_dir, args.eval_batches)
  eval_s = time.monotonic() - t_eval
  if grid.budget_kind == 'flops' and args.heldout > 0 and len(grid.budgets) >= 2:
    spec, held = heldout_run(out_dir, grid.family, grid.base, args.num_layers, args.aspect_ratio,
                             args.heldout)
    low_high = held['interval'] or [math.nan, math.nan]
    say(f"Held-out run {spec.name}: N={si(spec.non_embedding_params)} (fitted N_opt "
        f"{si(held['n_opt'])}), {spec.steps} steps; predicted loss {held['predicted_loss']:.4f} "
        f"(68% {low_high[0]:.4f}..{low_high[1]:.4f}).")
    write_run_files(out_dir, [spec], args.family, args.base_gin, bindings, train_flags)
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
    write_json(os.path.join(out_dir, 'sweep.json'), state)
  write_report(out_dir, args.last_k)
  say(f'Sweep finished in {format_seconds(time.monotonic() - t_start)}.')
  return 0


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
