"""What a scaling sweep shows people: each run's row (`collect`: size, budget, losses), and
results.csv, scaling.png (matplotlib), report.md and summary.json from the rows and the fits of
launch/scaling_fit.py.

Apart from the sweep so that drawing stays out of training and fitting: matplotlib is imported
only when a plot is drawn (`plan` and `run --dry_run` never load it).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Sequence

import numpy as np

from t5x_lite import curves  # metrics.jsonl rows; no JAX import
from t5x_lite.launch.common import UsageError
from t5x_lite.launch.scaling_fit import (HELDOUT, budget_order, budget_value, fit_rows,
                                         isoflop_rows)
from t5x_lite.launch.scaling_grid import read_json, run_dirs, say, write_json
from t5x_lite.progress import format_seconds

FIGSIZE = (8.0, 6.5)  # inches; at DPI, a 960 x 780 pixel PNG
DPI = 120


def si(n: float) -> str:
  """A count in three digits and K, M or B: the plan table, progress lines and the N axis."""
  for unit, div in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= div:
      return f'{n / div:.3g}{unit}'
  return f'{n:.3g}'


def _pm(value: float, error: float | None, fmt: str) -> str:
  return f'{value:{fmt}}' + (f' ± {error:{fmt}}' if error is not None else '')


def report_markdown(rows: Sequence[dict], fits: dict, sweep: dict) -> str:
  """report.md: what ran, the table, the fits with R² and residuals, and how long it took."""
  done = [r for r in rows if r['complete']]
  sources = sorted({r['loss_source'] for r in done})
  lines = [f"# Scaling sweep: {sweep.get('family', '?')} on {sweep.get('task', '?')}", '',
           f"Command: `{sweep.get('command', '?')}`", '',
           f"{len(done)} of {len(rows)} runs complete. Loss = {', '.join(sources) or '-'} "
           'cross-entropy in nats per target token (validation: the whole validation split, '
           'packed as in training, the same examples for every size; no z-loss). '
           'N = non-embedding parameters (token embedding, output layer and relative-position '
           'tables excluded, as in Kaplan et al. 2020); D = training tokens (inputs + targets).', '',
           '| run | d_model | layers | N | params | steps | D tokens | FLOPs | train loss | '
           'val loss | s/step | wall |', '|' + '---|' * 12]
  for r in rows:
    lines.append(
        f"| {r['name']} | {r['d_model']} | {r['num_layers']} | {r['non_embedding_params']:,} | "
        f"{r['params']:,} | {r['step_reached']}/{r['steps']} | {r['tokens']:,} | "
        f"{r['flops']:.3g} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} | "
        f"{r['seconds_per_step']:.3f} | {format_seconds(r['wall_s']) if math.isfinite(r['wall_s']) else '-'} |")
  lines += ['', '## Fits', '']
  if not fits['groups'] and not fits['joint']:
    lines.append('No fit yet: L(N) needs 3+ complete sizes that share a token budget.')
  for g, fit in fits['groups'].items():
    low_high = fit.get('alpha_range')
    profile = (f' (68% profile range {low_high[0]:.3g} to {low_high[1]:.3g})' if low_high else '')
    at_bound = fit['E'] < 1e-3 * float(np.min(fit['predicted']))
    bound_note = (' (at its bound E ≥ 0: the losses bend too little over this range of N to '
                  'separate E from A and α; standard errors at a bound mean nothing, the profile '
                  'range of α says what the points do pin down)' if at_bound else '')
    lines += [f'**L(N) = E + A·N^(-α), {g}** ({fit["points"]} runs, {fit["method"]}):', '',
              f'- α = {_pm(fit["alpha"], None if at_bound else fit["alpha_err"], ".4f")}{profile}',
              f'- E = {_pm(fit["E"], None if at_bound else fit["E_err"], ".4f")} nats{bound_note}',
              f'- A = {fit["A"]:.4g}',
              f'- R² = {fit["r2"]:.4f} (on the losses)',
              '- residuals (loss − fit): ' + ', '.join(
                  f'{n} {res:+.4f}' for n, res in zip(fit['names'], fit['residuals'])), '']
  joint = fits['joint']
  if joint:
    lines += [f'**L(N, D) = E + A·N^(-α) + B·D^(-β)** ({joint["points"]} runs, {joint["method"]}):',
              '', f'- α = {_pm(joint["alpha"], joint["alpha_err"], ".4f")}, '
              f'β = {_pm(joint["beta"], joint["beta_err"], ".4f")}',
              f'- E = {joint["E"]:.4f}, A = {joint["A"]:.4g}, B = {joint["B"]:.4g}',
              f'- R² = {joint["r2"]:.4f}', '- residuals: ' + ', '.join(
                  f'{n} {res:+.4f}' for n, res in zip(joint['names'], joint['residuals'])), '']
  if len(fits['groups']) and any(f['points'] <= 3 for f in fits['groups'].values()):
    lines += ['(3 points and 3 parameters: R² is 1 by construction; add sizes.)', '']
  timing = sweep.get('timing')
  walls = [r['wall_s'] for r in rows if math.isfinite(r['wall_s'])]
  if timing or walls:
    lines += ['## Time', '']
  if timing:
    lines.append(f"Last `run` that trained: {format_seconds(timing['total_s'])} wall in all "
                 f"(training {format_seconds(timing['train_s'])}, validation "
                 f"{format_seconds(timing['eval_s'])}, the rest setup, fit and plot).")
  if walls:
    lines.append(f'Training runs, summed over every invocation: {format_seconds(sum(walls))} '
                 f'for {len(walls)} runs.')
  if timing or walls:
    lines.append('')
  lines += ['![scaling](scaling.png)', '']
  return '\n'.join(lines)


def _fitted_curves(done: Sequence[dict], groups: Sequence[str], fits: dict, xlim) -> tuple:
  """({group: (N, fitted loss)} to draw, {run name: residual}): each group's own fit, and for a
  group without one the joint L(N, D) along its runs' (N, D) path."""
  curves = {}
  for g, fit in fits['groups'].items():
    n = np.logspace(*xlim, 200)
    curves[g] = (n, fit['E'] + fit['A'] * n ** -fit['alpha'])
  joint = fits.get('joint')
  residual_of = {}
  for fit in fits['groups'].values():
    residual_of.update(zip(fit['names'], fit['residuals']))
  if not joint:
    return curves, residual_of
  for name, res in zip(joint['names'], joint['residuals']):
    residual_of.setdefault(name, res)
  for g in groups:
    members = sorted((r for r in done if r['budget'] == g), key=lambda r: r['non_embedding_params'])
    if g not in curves and len(members) >= 2:
      ln = np.log10([r['non_embedding_params'] for r in members])
      ld = np.log10([r['tokens'] for r in members])
      grid = np.linspace(ln[0], ln[-1], 100)
      n, d = 10 ** grid, 10 ** np.interp(grid, ln, ld)
      curves[g] = (n, joint['E'] + joint['A'] * n ** -joint['alpha']
                   + joint['B'] * d ** -joint['beta'])
  return curves, residual_of


def figure(rows: Sequence[dict], fits: dict, title: str):
  """The plot as a matplotlib Figure, or None without a complete run: loss vs N (log x) with
  each budget group's points and fitted curve in its own colour, and the residuals (loss - fit)
  below. Each group's points are one scatter labelled with the group in both panels."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  done = [r for r in rows if r['complete'] and math.isfinite(r['loss'])]
  if not done:
    return None
  groups = sorted({r['budget'] for r in done}, key=budget_order)
  color = {g: f'C{i % 10}' for i, g in enumerate(groups)}
  n_all = np.array([r['non_embedding_params'] for r in done], float)
  xlim = (math.log10(n_all.min()) - 0.15, math.log10(n_all.max()) + 0.15)
  losses = np.array([r['loss'] for r in done])
  curves, residual_of = _fitted_curves(done, groups, fits, xlim)
  joint = fits.get('joint')
  # The loss axis follows the points; a curve that dives far below them is cut off.
  visible = np.concatenate([losses] + [c[1] for c in curves.values()])
  pad = 0.08 * (np.ptp(losses) or 1.0)
  low = min(losses.min(), visible[np.isfinite(visible)].min()) - pad
  ylim = (max(low, losses.min() - 1.5 * np.ptp(losses) - pad), losses.max() + pad)

  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')
  top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  handles, labels = [], []
  for g in groups:
    members = [r for r in done if r['budget'] == g]
    n = [r['non_embedding_params'] for r in members]
    if g in curves:
      top.plot(*curves[g], color=color[g], linewidth=1.5, label=f'{g} fit')
    handles.append(top.scatter(n, [r['loss'] for r in members], s=30, color=color[g], zorder=3,
                               label=g))
    fit = fits['groups'].get(g)
    labels.append(f'{g}: α = {fit["alpha"]:.3f}, E = {fit["E"]:.3f}, A = {fit["A"]:.3g}, '
                  f'R² = {fit["r2"]:.4f}' if fit else g)
    res = [(x, residual_of[r['name']]) for x, r in zip(n, members) if r['name'] in residual_of]
    if res:
      bottom.scatter(*zip(*res), s=22, color=color[g], zorder=3, label=g)
  if joint:
    handles.append(Line2D([], [], linestyle='none'))  # a text-only legend line
    labels.append(f'L(N,D) = E + A·N^-α + B·D^-β: α = {joint["alpha"]:.3f}, '
                  f'β = {joint["beta"]:.3f}, E = {joint["E"]:.3f}, R² = {joint["r2"]:.4f}')
  # The title heads the legend (one line per group with its fit) above the panels, as one block.
  fig.legend(handles, labels, loc='outside upper left', title=title, alignment='left',
             fontsize=9, title_fontsize=11, frameon=False)
  top.set_xscale('log')
  top.set_xlim(10 ** xlim[0], 10 ** xlim[1])
  top.set_ylim(*ylim)
  top.set_ylabel('loss (nats/token)')
  span = max(max((abs(v) for v in residual_of.values()), default=0.01), 1e-3) * 1.3
  bottom.axhline(0.0, color='black', linestyle='--', linewidth=0.8)
  bottom.set_ylim(-span, span)
  bottom.set_ylabel('residual')
  bottom.set_title('residuals: loss − fit', fontsize=9)
  bottom.set_xlabel('N (non-embedding parameters)')
  bottom.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  bottom.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: si(v)))
  bottom.xaxis.set_minor_formatter(ticker.NullFormatter())
  for ax in (top, bottom):
    ax.grid(True, color='0.92')
  return fig


def plot(rows: Sequence[dict], fits: dict, path: str, title: str) -> None:
  """Writes figure() to `path` as a PNG (Agg, FIGSIZE at DPI); nothing without a complete run."""
  fig = figure(rows, fits, title)
  if fig is not None:
    fig.savefig(path, format='png')


def isoflop_figure(rows: Sequence[dict], iso: dict, heldout: dict | None,
                   measured: float | None, title: str):
  """Iso-FLOP profiles: left, loss vs N per compute budget with its parabola in log N and its
  minimum (and the held-out run, its 68% prediction interval as an error bar and its `measured`
  loss); right, N_opt(C) with the fitted power law, extended to the held-out budget."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(11.0, 4.8), dpi=DPI, layout='constrained')
  left, right = fig.subplots(1, 2, width_ratios=(3, 2))
  for i, (budget, minimum) in enumerate(zip(iso['budgets'], iso['minima'])):
    members = [r for r in isoflop_rows(rows) if budget_value(r['budget']) == budget]
    n = np.array([r['non_embedding_params'] for r in members], float)
    left.scatter(n, [r['loss'] for r in members], s=28, color=f'C{i}', zorder=3,
                 label=f'C = {budget:.3g} FLOPs')
    grid = np.linspace(np.log(n.min()), np.log(n.max()), 100)
    left.plot(np.exp(grid), np.polyval(minimum['parabola'], grid), color=f'C{i}', linewidth=1.2)
    left.scatter([minimum['n_opt']], [minimum['loss']], marker='*', s=160, color=f'C{i}',
                 edgecolor='black', zorder=4)
  budgets = list(iso['budgets'])
  if heldout:
    low, high = heldout['interval'] or (heldout['predicted_loss'],) * 2
    n_run = heldout['non_embedding_params']
    left.errorbar([n_run], [heldout['predicted_loss']],
                  yerr=[[heldout['predicted_loss'] - low], [high - heldout['predicted_loss']]],
                  fmt='D', color='black', mfc='white', capsize=4, zorder=5,
                  label=f"held-out C = {heldout['budget']:.3g}: predicted (68%)")
    if measured is not None:
      left.scatter([n_run], [measured], marker='D', s=40, color='black', zorder=6,
                   label=f'held-out: measured {measured:.4f}')
    budgets.append(heldout['budget'])
  left.set_xscale('log')
  left.set_xlabel('N (non-embedding parameters)')
  left.set_ylabel('loss (nats/token)')
  left.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: si(v)))
  left.legend(fontsize=8, frameon=False)
  c = np.array(iso['budgets'], float)
  right.scatter(c, [m['n_opt'] for m in iso['minima']], color='C0', zorder=3,
                label='N_opt from each profile')
  line = np.geomspace(min(budgets) / 1.5, max(budgets) * 1.5, 50)
  right.plot(line, np.exp(iso['log_ka']) * line ** iso['a'], color='C0',
             label=f"N_opt ∝ C^{iso['a']:.3f} (68% {iso['a_interval'][0]:.3f}.."
                   f"{iso['a_interval'][1]:.3f})" if iso.get('a_interval') else
                   f"N_opt ∝ C^{iso['a']:.3f}")
  if heldout:
    right.scatter([heldout['budget']], [heldout['non_embedding_params']], marker='D',
                  color='black', zorder=4, label='held-out run (the nearest size trained)')
  right.set_xscale('log')
  right.set_yscale('log')
  right.set_xlabel('C (training FLOPs)')
  right.set_ylabel('N_opt')
  right.legend(fontsize=8, frameon=False)
  for ax in (left, right):
    ax.grid(True, color='0.92')
  fig.suptitle(title)
  return fig


def plot_isoflop(rows: Sequence[dict], iso: dict, heldout: dict | None, measured: float | None,
                 path: str, title: str) -> None:
  """Writes isoflop_figure() to `path` as a PNG."""
  isoflop_figure(rows, iso, heldout, measured, title).savefig(path, format='png')


def isoflop_markdown(iso: dict | None, heldout: dict | None, summary: dict) -> list[str]:
  """report.md's iso-FLOP section: each budget's minimum, the exponents, the held-out test."""
  if not iso:
    return []
  if 'error' in iso:
    return ['## Iso-FLOP profiles', '', f"No fit: {iso['error']}", '']
  lines = ['## Iso-FLOP profiles (Hoffmann et al. 2022, approach 2)', '',
           'Each budget\'s loss minimum over N is the vertex of a parabola in log N through its '
           'runs; N_opt(C) ∝ C^a and D_opt(C) ∝ C^b are least-squares lines in log-log over the '
           f"budgets; 68% intervals from {iso['bootstrap']} bootstrap resamples of the runs "
           f"within each budget ({iso['bootstrap_dropped']} draws without a minimum dropped). "
           f"The parabolas leave {iso.get('noise', math.nan):.4f} nats of noise per run; the "
           "intervals do not hold how far a parabola's vertex may sit from a profile's true "
           'minimum (bench/scaling_interval_coverage.md).', '',
           '| C (FLOPs) | N_opt | D_opt | loss at the minimum | minimum inside the sizes run |',
           '|---|---|---|---|---|']
  for budget, m in zip(iso['budgets'], iso['minima']):
    lines.append(f"| {budget:.3g} | {si(m['n_opt'])} | {si(m['d_opt'])} | {m['loss']:.4f} | "
                 f"{'yes' if m['bracketed'] else 'no (extrapolated)'} |")
  unbracketed = unbracketed_minima(iso)
  if unbracketed:
    lines += ['', '**Not a measured minimum:** ' + '; '.join(unbracketed) + '. The exponents '
              'below extrapolate the parabolas and mean little until the sizes bracket every '
              "budget's minimum."]
  interval = lambda k: (f" (68% {iso[k][0]:.3f} to {iso[k][1]:.3f})" if iso.get(k) else '')
  lines += ['', f"- a = {iso['a']:.3f}{interval('a_interval')} (Chinchilla: 0.50)",
            f"- b = {iso['b']:.3f}{interval('b_interval')} (Chinchilla: 0.50)", '']
  if heldout:
    low_high = heldout['interval']
    lines += [f"**Held-out run** at C = {heldout['budget']:.3g} ({heldout['factor']:g}× the "
              f"largest fitted budget), fitted N_opt {si(heldout['n_opt'])}, trained at N = "
              f"{si(heldout['non_embedding_params'])} for {heldout['steps']} steps: predicted "
              f"loss {heldout['predicted_loss']:.4f}"
              + (f" (68% {low_high[0]:.4f} to {low_high[1]:.4f})" if low_high else '') + '; '
              + (f"measured {summary['heldout_loss']:.4f}, error "
                 f"{summary['heldout_rel_error']:+.2%}." if summary['heldout_loss'] is not None
                 else 'not trained and evaluated yet.'), '']
  return lines + ['![iso-FLOP profiles](isoflop.png)', '']


def unbracketed_minima(iso: dict) -> list[str]:
  """One phrase per budget whose parabola's vertex lies outside the sizes it ran, saying which
  sizes to add."""
  out = []
  for budget, m in zip(iso['budgets'], iso['minima']):
    low, high = m['n_range']
    if not m['bracketed']:
      side = 'smaller' if m['n_opt'] < low else 'larger'
      out.append(f"at C = {budget:.3g} the fitted minimum N = {si(m['n_opt'])} lies outside the "
                 f'sizes run ({si(low)} to {si(high)}): add {side} sizes or '
                 f"{'less' if side == 'larger' else 'more'} compute")
  return out


LAST_K = 5                 # training-loss fallback: mean over this many last logged steps


def eval_loss(rows: Sequence[dict], step: int) -> float | None:
  """The validation loss logged at `step` (the last one if logged twice), or None."""
  found = None
  for r in rows:
    if int(r.get('step', -1)) == step:
      for k, v in r.items():
        if k.startswith('eval/') and k.endswith('/loss'):
          found = float(v)
  return found


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
