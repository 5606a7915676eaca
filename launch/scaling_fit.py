"""The fits behind launch/scaling.py's report: L(N) = E + A·N^(-α) per token budget,
L(N, D) = E + A·N^(-α) + B·D^(-β) across budgets, with R² and profile ranges, and iso-FLOP
profiles (Hoffmann et al. 2022, approach 2): each compute budget's loss minimum over N, the
exponents of N_opt(C) ∝ C^a and D_opt(C) ∝ C^b, bootstrap intervals, and the loss a
compute-optimal run at a new budget should reach.

Apart from the sweep (numpy and, when there, scipy; no training code) so that a fit can be
checked on any set of (N, D, loss) points.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def r_squared(y, predicted) -> float:
  """1 - SS_res / SS_tot, on the losses themselves."""
  y, predicted = np.asarray(y, float), np.asarray(predicted, float)
  return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
  """Least squares with every coefficient >= 0, exact for a few columns: the best of the
  unconstrained fits over column subsets whose coefficients all come out non-negative."""
  k = x.shape[1]
  coef, *_ = np.linalg.lstsq(x, y, rcond=None)
  if np.all(coef >= 0):  # the unconstrained optimum is feasible, hence the constrained one
    return coef, float(np.sum((x @ coef - y) ** 2))
  best, best_sse = np.zeros(k), float(np.sum(y ** 2))
  for mask in range(1, (1 << k) - 1):
    cols = [j for j in range(k) if mask >> j & 1]
    coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
    if np.all(coef >= 0):
      full = np.zeros(k)
      full[cols] = coef
      sse = float(np.sum((x @ full - y) ** 2))
      if sse < best_sse:
        best, best_sse = full, sse
  return best, best_sse


def _refine(model, x, y, p0, lower):
  """scipy's curve_fit from the grid optimum, when scipy is there: (params, standard errors)."""
  try:
    from scipy import optimize  # pylint: disable=import-outside-toplevel
  except ImportError:
    return np.asarray(p0, float), None
  import warnings  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      p, cov = optimize.curve_fit(model, x, y, p0=p0, bounds=(lower, np.inf), maxfev=20000)
    except (RuntimeError, ValueError):
      return np.asarray(p0, float), None
  sse0 = np.sum((model(x, *p0) - y) ** 2)
  if np.sum((model(x, *p) - y) ** 2) > sse0:
    return np.asarray(p0, float), None
  errors = np.sqrt(np.diag(cov)) if len(y) > len(p0) and np.all(np.isfinite(cov)) else None
  return p, errors


def fit_power_law(n, loss) -> dict:
  """L(N) = E + A·N^(-α) by least squares on the losses, with E, A, α >= 0.

  For fixed α the model is linear in (E, A): a grid over α with a non-negative linear fit finds
  the global optimum's neighbourhood, then curve_fit refines all three (and gives standard
  errors). N is scaled by its geometric mean inside, which keeps the columns well conditioned.

  The same grid is the profile of the squared error over α, which gives `alpha_range`: the α
  whose best (E, A) fit is within a 68% F-test of the optimum (Bates & Watts 1988, profile
  intervals). A few points over a small loss range often fit a whole range of α, trading E
  against A; the range says so where one number would not.
  """
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  if len(np.unique(n)) < 3:
    raise ValueError(f'fitting E + A·N^-α needs at least 3 distinct sizes, got {len(np.unique(n))}.')
  scale = float(np.exp(np.mean(np.log(n))))
  x = n / scale
  alphas = np.geomspace(1e-3, 3.0, 800)
  fits = [_nonnegative_lstsq(np.stack([np.ones_like(x), x ** -a], 1), loss) for a in alphas]
  profile = np.array([sse for _, sse in fits])
  best = int(np.argmin(profile))
  (e, a_scaled), alpha = fits[best][0], alphas[best]
  model = lambda x_, e_, a_, alpha_: e_ + a_ * x_ ** -alpha_
  (e, a_scaled, alpha), errors = _refine(model, x, loss, [e, a_scaled, alpha], [0, 0, 0])
  predicted = model(x, e, a_scaled, alpha)
  sse = float(np.sum((loss - predicted) ** 2))
  return {'E': float(e), 'A': float(a_scaled * scale ** alpha), 'alpha': float(alpha),
          'E_err': None if errors is None else float(errors[0]),
          'alpha_err': None if errors is None else float(errors[2]),
          'alpha_range': _profile_range(alphas, profile, min(sse, profile.min()), len(loss) - 3),
          'r2': r_squared(loss, predicted), 'predicted': predicted, 'residuals': loss - predicted,
          'points': len(loss), 'method': 'grid + curve_fit' if errors is not None else 'grid'}


def _profile_range(values, profile, sse_min: float, dof: int):
  """(low, high) of the grid values whose profiled error passes a 68% F-test, or None."""
  try:
    from scipy import stats  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  if dof < 1:
    return None
  threshold = sse_min * (1 + stats.t.ppf(0.84, dof) ** 2 / dof)
  inside = values[profile <= threshold]
  return (float(inside.min()), float(inside.max())) if len(inside) else None


def fit_joint(n, d, loss) -> dict:
  """L(N, D) = E + A·N^(-α) + B·D^(-β) (Hoffmann et al. 2022), as fit_power_law: a grid over
  (α, β) with a non-negative linear fit of (E, A, B), then curve_fit."""
  n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
  if len(loss) < 6 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    raise ValueError('fitting L(N, D) needs at least 6 runs over 2+ sizes and 2+ token budgets.')
  sn, sd = (float(np.exp(np.mean(np.log(v)))) for v in (n, d))
  xn, xd = n / sn, d / sd
  best = None
  grid = np.linspace(0.02, 2.0, 100)
  for alpha in grid:
    for beta in grid:
      x = np.stack([np.ones_like(xn), xn ** -alpha, xd ** -beta], 1)
      coef, sse = _nonnegative_lstsq(x, loss)
      if best is None or sse < best[0]:
        best = (sse, *coef, alpha, beta)
  xs = np.stack([xn, xd])
  model = lambda x_, e_, a_, b_, alpha_, beta_: e_ + a_ * x_[0] ** -alpha_ + b_ * x_[1] ** -beta_
  p, errors = _refine(model, xs, loss, list(best[1:]), [0] * 5)
  e, a, b, alpha, beta = p
  predicted = model(xs, *p)
  return {'E': float(e), 'A': float(a * sn ** alpha), 'B': float(b * sd ** beta),
          'alpha': float(alpha), 'beta': float(beta),
          'alpha_err': None if errors is None else float(errors[3]),
          'beta_err': None if errors is None else float(errors[4]),
          'r2': r_squared(loss, predicted), 'predicted': predicted, 'residuals': loss - predicted,
          'points': len(loss), 'method': 'grid + curve_fit' if errors is not None else 'grid'}


HELDOUT = 'heldout'  # the budget kind of a sweep's held-out run: predicted, never fitted


def fit_rows(rows: Sequence[dict], bootstrap: int = 1000) -> dict:
  """L(N) per budget group whose runs share D (3+ sizes), L(N, D) when D varies, and iso-FLOP
  exponents over 'flops=' budgets (2+ of them with 3+ sizes each). A held-out run is left out."""
  done = [r for r in rows if r['complete'] and math.isfinite(r['loss'])
          and not r['budget'].startswith(HELDOUT + '=')]
  fits = {'groups': {}, 'joint': None, 'isoflop': None}
  columns = isoflop_columns(rows)
  if len(set(columns[0])) >= 2:
    try:
      fits['isoflop'] = fit_isoflop(*columns, bootstrap=bootstrap)
    except ValueError as e:
      fits['isoflop'] = {'error': str(e)}
  for group in sorted({r['budget'] for r in done}, key=budget_order):
    members = [r for r in done if r['budget'] == group]
    if len({r['tokens'] for r in members}) == 1 and len({r['non_embedding_params']
                                                         for r in members}) >= 3:
      members.sort(key=lambda r: r['non_embedding_params'])
      fit = fit_power_law([r['non_embedding_params'] for r in members], [r['loss'] for r in members])
      fits['groups'][group] = {**fit, 'names': [r['name'] for r in members]}
  if len({r['tokens'] for r in done}) >= 2 and len(done) >= 6:
    try:
      fit = fit_joint([r['non_embedding_params'] for r in done], [r['tokens'] for r in done],
                      [r['loss'] for r in done])
      fits['joint'] = {**fit, 'names': [r['name'] for r in done]}
    except ValueError:
      pass
  return fits


def budget_order(group: str) -> tuple:
  """Sort key of a budget group such as 'tokens=2e5': by kind, then by value as a number."""
  kind, value = group.split('=')
  return kind, float(value)


def budget_value(group: str) -> float:
  """The number in a budget group such as 'flops=2e+13'."""
  return budget_order(group)[1]


def isoflop_rows(rows: Sequence[dict]) -> list[dict]:
  """The runs iso-FLOP fits read: complete, with a finite loss, in a 'flops=' budget."""
  return [r for r in rows if r['complete'] and math.isfinite(r['loss'])
          and r['budget'].startswith('flops=')]


def isoflop_columns(rows: Sequence[dict]) -> list[tuple]:
  """(C, N, D, loss) of isoflop_rows, column by column, as fit_isoflop takes them."""
  return list(zip(*[(budget_value(r['budget']), r['non_embedding_params'], r['tokens'], r['loss'])
                    for r in isoflop_rows(rows)])) or [()] * 4


def isoflop_minimum(n, d, loss) -> dict | None:
  """One budget's loss minimum over N: the vertex of a parabola in log N through its runs; D there
  from the runs' own log D-log N line (D ∝ C/N for whatever FLOP count set the budget). None when
  the parabola does not open upward (or is too flat to place a vertex). `bracketed`: the vertex
  lies within the sizes run (`n_range`)."""
  x, y = np.log(np.asarray(n, float)), np.asarray(loss, float)
  if len(np.unique(x)) < 3:
    return None
  c2, c1, c0 = np.polyfit(x, y, 2)
  vertex = -c1 / (2 * c2) if c2 > 0 else math.inf
  if not -700 < vertex < 700:  # opens downward, or so flat that exp(vertex) over- or underflows
    return None
  slope, intercept = np.polyfit(x, np.log(np.asarray(d, float)), 1)
  return {'n_opt': float(np.exp(vertex)), 'd_opt': float(np.exp(intercept + slope * vertex)),
          'loss': float(c0 + c1 * vertex + c2 * vertex ** 2),
          'parabola': [float(c2), float(c1), float(c0)],  # loss in log N, for np.polyval
          'bracketed': bool(x.min() <= vertex <= x.max()),
          'n_range': [float(np.exp(x.min())), float(np.exp(x.max()))]}


def _isoflop_exponents(groups) -> dict | None:
  """a, b and their intercepts (log-log least squares over budgets) from [(C, n, d, loss), ...]."""
  minima = [isoflop_minimum(n, d, loss) for _, n, d, loss in groups]
  if any(m is None for m in minima):
    return None
  log_c = np.log([c for c, *_ in groups])
  a, log_ka = np.polyfit(log_c, np.log([m['n_opt'] for m in minima]), 1)
  b, log_kb = np.polyfit(log_c, np.log([m['d_opt'] for m in minima]), 1)
  return {'a': float(a), 'b': float(b), 'log_ka': float(log_ka), 'log_kb': float(log_kb),
          'minima': minima}


def _parabola_noise(groups, minima) -> float:
  """The run-to-run noise the budgets' parabolas (isoflop_minimum's) leave: RMS residual over all
  budgets, per degree of freedom."""
  residuals = np.concatenate([loss - np.polyval(m['parabola'], np.log(n))
                              for (_, n, _, loss), m in zip(groups, minima)])
  dof = len(residuals) - 3 * len(groups)
  return float(np.sqrt(np.sum(residuals ** 2) / dof)) if dof > 0 else math.nan


def fit_isoflop(c, n, d, loss, bootstrap: int = 1000, seed: int = 0) -> dict:
  """N_opt(C) = k_a·C^a and D_opt(C) = k_b·C^b from each budget's minimum, with 68% bootstrap
  intervals: runs resampled with replacement within each budget, every fit redone; a draw whose
  parabola opens downward is dropped and counted.

  Why runs and not residuals (which keep the sizes, the sweep's design, and add resampled noise
  to the fitted parabolas): on sweeps simulated from a surface fitted to the default sweep, where
  the profiles are not parabolas, both intervals miss the parabola vertex's bias, and resampling
  runs, the wider, held the true a in 64% of sweeps against 53% at the measured noise; on
  Hoffmann et al.'s surface, 76% (residuals: 67-71%) at 1.6-1.8x the width
  (bench/scaling_interval_coverage.md). `noise`: the parabolas' residual spread, for the report.
  """
  c, n, d, loss = (np.asarray(v, float) for v in (c, n, d, loss))
  budgets = sorted(set(c.tolist()))
  if len(budgets) < 2 or any(len(np.unique(n[c == b])) < 3 for b in budgets):
    raise ValueError('iso-FLOP fits need 2+ compute budgets with 3+ sizes each, got '
                     + ', '.join(f'{b:.3g}: {len(np.unique(n[c == b]))} sizes' for b in budgets)
                     + '.')
  groups = [(b, n[c == b], d[c == b], loss[c == b]) for b in budgets]
  point = _isoflop_exponents(groups)
  if point is None:
    raise ValueError('a budget\'s losses do not bend upward around a minimum over N: add sizes '
                     'on both sides of its best run.')
  rng = np.random.default_rng(seed)
  draws, dropped = [], 0
  for _ in range(bootstrap):
    picks = [rng.integers(0, len(g[1]), len(g[1])) for g in groups]
    fit = _isoflop_exponents([(b, gn[i], gd[i], gl[i]) for (b, gn, gd, gl), i in zip(groups, picks)])
    if fit is None:
      dropped += 1
    else:
      draws.append((fit['a'], fit['b']))
  interval = lambda k: ([float(v) for v in np.percentile([x[k] for x in draws], [16, 84])]
                        if draws else None)
  return {**point, 'budgets': budgets, 'a_interval': interval(0), 'b_interval': interval(1),
          'bootstrap': len(draws), 'bootstrap_dropped': dropped, 'noise': _parabola_noise(groups, point['minima'])}


def compute_optimal(fit: dict, budget: float) -> tuple[float, float]:
  """(N_opt, D_opt) at `budget` from fit_isoflop's power laws (extrapolated beyond its budgets)."""
  log_c = math.log(budget)
  return (math.exp(fit['log_ka'] + fit['a'] * log_c), math.exp(fit['log_kb'] + fit['b'] * log_c))


def joint_loss(fit: dict, n: float, d: float) -> float:
  """fit_joint's L(N, D) at one point."""
  return fit['E'] + fit['A'] * n ** -fit['alpha'] + fit['B'] * d ** -fit['beta']


def predict_compute_optimal_loss(c, n, d, loss, budget: float, at: tuple | None = None,
                                 bootstrap: int = 200, seed: int = 0) -> dict:
  """The loss of the compute-optimal run at `budget`: N_opt and D_opt from the iso-FLOP exponents
  (or the run actually trained there, `at` = (N, D)), the loss from L(N, D) fitted to the same
  runs; a 68% interval from the same refit on bootstrap resamples of the runs (within each
  budget)."""
  c, n, d, loss = (np.asarray(v, float) for v in (c, n, d, loss))
  iso = fit_isoflop(c, n, d, loss, bootstrap=0)
  joint = fit_joint(n, d, loss)
  n_opt, d_opt = compute_optimal(iso, budget)
  rng = np.random.default_rng(seed)
  budgets = sorted(set(c.tolist()))
  draws = []
  for _ in range(bootstrap):
    idx = np.concatenate([rng.choice(np.flatnonzero(c == b), int(np.sum(c == b)))
                          for b in budgets])
    try:
      iso_b = fit_isoflop(c[idx], n[idx], d[idx], loss[idx], bootstrap=0)
      joint_b = fit_joint(n[idx], d[idx], loss[idx])
    except ValueError:
      continue
    draws.append(joint_loss(joint_b, *(at or compute_optimal(iso_b, budget))))
  return {'budget': budget, 'n_opt': n_opt, 'd_opt': d_opt, 'at': list(at) if at else None,
          'loss': joint_loss(joint, *(at or (n_opt, d_opt))),
          'interval': [float(v) for v in np.percentile(draws, [16, 84])] if draws else None,
          'bootstrap': len(draws), 'isoflop': iso, 'joint': joint}
