"""launch/scaling.py (the size grid, collecting metrics, resuming a sweep, cluster jobs), the
fits of launch/scaling_fit.py and the plot and report of launch/scaling_report.py."""

import dataclasses
import json
import os
import pathlib
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from t5x_lite.launch import scaling, scaling_fit, scaling_grid, scaling_report, scaling_runner


@pytest.fixture(scope='module')
def default_grid():
  family = scaling_grid.FAMILIES['t5_1_1']
  base = scaling_grid.read_base(scaling_grid.BASE_GIN, family, [], scaling_grid.DEFAULT_VOCAB_SIZE)
  kind, budgets = scaling_grid.parse_budgets(None, None, None)
  return base, scaling_grid.build_grid(family, scaling_grid.DEFAULT_SIZES, kind, budgets, base)


# --- the size grid ----------------------------------------------------------------------------

def test_default_grid_has_5_sizes_spanning_30x_in_non_embedding_params(default_grid):
  _, specs = default_grid
  n = [s.non_embedding_params for s in specs]
  assert len(specs) >= 5 and n == sorted(n)
  assert max(n) / min(n) >= 30


def test_each_size_follows_from_d_model(default_grid):
  _, specs = default_grid
  for s in specs:
    f = s.fields
    assert f['num_heads'] * f['d_kv'] == f['d_model'] == s.d_model
    assert f['d_ff'] == 3 * f['d_model']
    assert f['num_encoder_layers'] == f['num_decoder_layers'] == 2


def test_parameter_counts_match_the_model_and_a_hand_count(default_grid):
  """Total from t5x_lite.models.count_params; non-embedding from the T5.1.1 layer formula."""
  from t5x_lite import models
  base, specs = default_grid
  for s in specs:
    config = dataclasses.replace(base.config, **s.fields)
    assert s.params == models.count_params(config)
    d, i, f, layers = s.d_model, s.d_model, s.fields['d_ff'], 2
    encoder_layer = 4 * d * i + 3 * d * f + 2 * d      # q k v o, wi_0 wi_1 wo, two norms
    decoder_layer = 8 * d * i + 3 * d * f + 3 * d      # + cross-attention and its norm
    assert s.non_embedding_params == layers * (encoder_layer + decoder_layer) + 2 * d
    heads = s.fields['num_heads']
    assert s.params - s.non_embedding_params == 2 * config.vocab_size * d + 2 * 32 * heads
    assert s.flops_per_step == models.training_flops_per_example(
        config, base.task_feature_lengths) * base.batch_size


def test_run_gin_builds_the_config_the_sweep_counted(default_grid, tmp_path):
  import gin
  from t5x_lite import gin_utils
  base, specs = default_grid
  spec = specs[1]
  path = tmp_path / 'run.gin'
  path.write_text(scaling_grid.run_gin(spec, 't5_1_1', str(tmp_path), scaling_grid.BASE_GIN,
                                  [f'VOCAB_SIZE = {base.config.vocab_size}']))
  gin.clear_config()
  try:
    gin_utils.parse([str(path)], [])
    assert gin_utils.query_macro('MODEL_CONFIG') == dataclasses.replace(base.config, **spec.fields)
    assert gin_utils.query_macro('TRAIN_STEPS') == spec.steps
    assert gin_utils.query_macro('MODEL_DIR') == str(tmp_path)
  finally:
    gin.clear_config()


def test_token_and_iso_flop_budgets_set_steps(default_grid):
  base, specs = default_grid
  family = scaling_grid.FAMILIES['t5_1_1']
  by_tokens = scaling_grid.build_grid(family, [32, 64], 'tokens', [128_000, 256_000], base)
  assert [s.steps for s in by_tokens] == [100, 200, 100, 200]
  budget = 40 * specs[-1].flops_per_step
  iso = scaling_grid.build_grid(family, [32, specs[-1].d_model], 'flops', [budget], base)
  assert [s.steps for s in iso] == [round(budget / s.flops_per_step) for s in iso]
  assert iso[1].steps == 40 and iso[0].steps > iso[1].steps


def test_heads_are_about_32_wide_and_one_below():
  family = scaling_grid.FAMILIES['t5_1_1']
  shape = lambda d: (lambda f: (f['num_heads'], f['d_kv']))(scaling_grid.model_fields(family, d))
  assert [shape(d) for d in (8, 24, 32, 48, 96, 512)] == [
      (1, 8), (1, 24), (1, 32), (2, 24), (3, 32), (16, 32)]


def test_iso_flop_windows_slide_up_with_the_budget(default_grid):
  base, _ = default_grid
  family = scaling_grid.FAMILIES['t5_1_1']
  sizes = [8, 16, 24, 32, 48, 64, 96]
  specs = scaling_grid.build_grid(family, sizes, 'flops', [5e12, 5e11, 1.6e12], base,
                             sizes_per_budget=5)
  used = {b: [s.d_model for s in specs if s.budget == f'flops={b:g}'] for b in (5e11, 1.6e12, 5e12)}
  assert used == {5e11: sizes[0:5], 1.6e12: sizes[1:6], 5e12: sizes[2:7]}
  every = scaling_grid.build_grid(family, sizes, 'flops', [5e11, 5e12], base)
  assert len(every) == 14


def test_the_default_sweep_is_iso_flop_on_offline_english(tmp_path, capsys):
  assert scaling.main(['plan', f'--out_dir={tmp_path}']) == 0
  printed = capsys.readouterr().out
  assert 'Sweep: decoder_only' in printed and 'on english_full_lm' in printed
  budgets = scaling_grid.DEFAULT_FLOPS
  assert len(budgets) >= 3 and max(budgets) / min(budgets) >= 10
  rows = [line.split() for line in printed.splitlines() if line.startswith('d0')]
  assert len(rows) == len(budgets) * scaling_grid.DEFAULT_WINDOW
  for b in budgets:
    assert sum(float(r[-2]) == b for r in rows) == scaling_grid.DEFAULT_WINDOW


def test_aspect_ratio_scales_depth_with_width():
  family = scaling_grid.FAMILIES['t5_1_1']
  assert scaling_grid.model_fields(family, 256, aspect_ratio=64)['num_encoder_layers'] == 4
  assert scaling_grid.model_fields(family, 32, aspect_ratio=64)['num_decoder_layers'] == 1
  only = scaling_grid.model_fields(scaling_grid.FAMILIES['decoder_only'], 64, 3)
  assert (only['num_encoder_layers'], only['num_decoder_layers']) == (0, 3)


# --- fits -------------------------------------------------------------------------------------

def test_r_squared_matches_numpy_reference():
  """For a least-squares line with intercept, R² is the squared Pearson correlation."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, 20)
  y = 2 * x + rng.normal(0, 0.3, 20)
  line = np.polyval(np.polyfit(x, y, 1), x)
  assert scaling_fit.r_squared(y, line) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-12)
  assert scaling_fit.r_squared(y, y) == 1.0
  assert scaling_fit.r_squared(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)


N = np.logspace(4.5, 7, 7)
E, A, ALPHA = 1.8, 30.0, 0.35


def test_power_law_fit_recovers_exact_parameters():
  fit = scaling_fit.fit_power_law(N, E + A * N ** -ALPHA)
  assert fit['alpha'] == pytest.approx(ALPHA, rel=1e-4)
  assert fit['E'] == pytest.approx(E, rel=1e-4)
  assert fit['A'] == pytest.approx(A, rel=1e-3)
  assert fit['r2'] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize('scipy_available', [True, False])
def test_power_law_fit_recovers_parameters_from_noisy_losses(scipy_available, monkeypatch):
  if not scipy_available:
    monkeypatch.setitem(sys.modules, 'scipy', None)  # `from scipy import ...` raises ImportError
  rng = np.random.default_rng(1)
  loss = E + A * N ** -ALPHA + rng.normal(0, 0.004, len(N))
  fit = scaling_fit.fit_power_law(N, loss)
  assert fit['method'] == ('grid + curve_fit' if scipy_available else 'grid')
  assert abs(fit['alpha'] - ALPHA) < 0.03
  if scipy_available:
    low, high = fit['alpha_range']
    assert low < ALPHA < high and high - low < 0.2
  assert abs(fit['E'] - E) < 0.03
  assert fit['r2'] > 0.999
  assert np.allclose(fit['residuals'], loss - fit['predicted'])
  assert fit['r2'] == pytest.approx(1 - np.sum(fit['residuals'] ** 2)
                                    / np.sum((loss - loss.mean()) ** 2))


def test_points_that_barely_bend_give_a_wide_alpha_range():
  """Over 1.5 decades a small α with E = 0 and a larger α with E > 0 fit nearly alike: the
  profile range must cover both rather than report one α as if it were pinned down."""
  n = np.logspace(5, 6.5, 5)
  loss = 5.5 * n ** -0.01 + np.array([0.004, -0.004, 0.003, -0.003, 0.0])
  low, high = scaling_fit.fit_power_law(n, loss)['alpha_range']
  assert low <= 0.012 and high >= 0.05


def test_joint_fit_recovers_n_and_d_exponents():
  n, d = (v.ravel() for v in np.meshgrid(np.logspace(5, 7, 4), np.logspace(6, 8, 3)))
  loss = 1.7 + 20 * n ** -0.3 + 300 * d ** -0.4
  fit = scaling_fit.fit_joint(n, d, loss)
  assert fit['alpha'] == pytest.approx(0.3, rel=1e-3)
  assert fit['beta'] == pytest.approx(0.4, rel=1e-3)
  assert fit['E'] == pytest.approx(1.7, rel=1e-3)
  assert fit['r2'] == pytest.approx(1.0, abs=1e-9)


def test_fit_needs_three_sizes():
  with pytest.raises(ValueError, match='3 distinct sizes'):
    scaling_fit.fit_power_law([1e5, 1e5, 1e6], [3.0, 3.1, 2.5])


# Hoffmann et al. 2022's fitted surface (their eq. 10), which synthetic iso-FLOP sweeps sample:
# with C = 6ND the optimum is N_opt ∝ C^(β/(α+β)) = C^0.4516 and D_opt ∝ C^(α/(α+β)) = C^0.5484.
CHINCHILLA = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}


def _chinchilla_optimum(budget):
  """The exact minimiser of L(N, C/6N) over N, solved by hand (dL/dN = 0)."""
  e, a, b, alpha, beta = (CHINCHILLA[k] for k in ('E', 'A', 'B', 'alpha', 'beta'))
  n = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (budget / 6) ** (beta / (alpha + beta))
  return n, budget / (6 * n)


def _isoflop_sweep(budgets, noise=0.0, sizes=7, span=8.0):
  """Runs at `sizes` sizes spanning `span`x around each budget's optimum, losses from the surface
  plus Gaussian noise: (C, N, D, loss) arrays."""
  rng = np.random.default_rng(0)
  rows = []
  for budget in budgets:
    for n in _chinchilla_optimum(budget)[0] * np.geomspace(span ** -0.5, span ** 0.5, sizes):
      d = budget / (6 * n)
      rows.append((budget, n, d, scaling_fit.joint_loss(CHINCHILLA, n, d)
                   + noise * rng.standard_normal()))
  return [np.array(v) for v in zip(*rows)]


@pytest.mark.parametrize('noise,tolerance', [(0.0, 1e-3), (0.002, 0.02)])
def test_isoflop_fit_recovers_the_exponents_of_a_known_surface(noise, tolerance):
  beta_share = CHINCHILLA['beta'] / (CHINCHILLA['alpha'] + CHINCHILLA['beta'])
  fit = scaling_fit.fit_isoflop(*_isoflop_sweep([1e18, 1e19, 1e20], noise), bootstrap=300)
  assert fit['a'] == pytest.approx(beta_share, abs=tolerance)
  assert fit['b'] == pytest.approx(1 - beta_share, abs=tolerance)
  assert all(m['bracketed'] for m in fit['minima'])
  for m, budget in zip(fit['minima'], fit['budgets']):  # each minimum near the true optimum
    assert m['n_opt'] == pytest.approx(_chinchilla_optimum(budget)[0], rel=0.1)
  low, high = fit['a_interval']
  assert low < fit['a'] < high and high - low < 0.05 and fit['bootstrap'] > 250


def test_isoflop_interval_holds_the_true_exponent_about_68_percent_of_the_time():
  """The 68% interval over 80 simulated sweeps (5 sizes per budget, noise a tenth of the profiles'
  depth): its coverage of the surface's true a is near its nominal 68%, not a point, not all."""
  beta_share = CHINCHILLA['beta'] / (CHINCHILLA['alpha'] + CHINCHILLA['beta'])
  c, n, d, clean = _isoflop_sweep([1e18, 3e18, 1e19], sizes=5)
  rng = np.random.default_rng(7)
  hits, widths = [], []
  for trial in range(80):
    fit = scaling_fit.fit_isoflop(c, n, d, clean + 0.01 * rng.standard_normal(len(clean)),
                                  bootstrap=200, seed=trial)
    low, high = fit['a_interval']
    hits.append(low <= beta_share <= high)
    widths.append(high - low)
  assert 0.5 <= np.mean(hits) <= 0.85, np.mean(hits)
  assert 0.01 < np.median(widths) < 0.2  # an interval, neither a point nor everything


def test_isoflop_prediction_4x_past_the_fitted_budgets_matches_the_surface():
  c, n, d, loss = _isoflop_sweep([1e18, 3e18, 1e19], noise=0.002)
  got = scaling_fit.predict_compute_optimal_loss(c, n, d, loss, 4e19, bootstrap=4)
  n_opt, d_opt = _chinchilla_optimum(4e19)
  want = scaling_fit.joint_loss(CHINCHILLA, n_opt, d_opt)
  assert got['loss'] == pytest.approx(want, rel=2e-3)
  assert got['n_opt'] == pytest.approx(n_opt, rel=0.15)
  assert got['interval'][0] <= got['interval'][1]


def test_a_minimum_outside_the_sizes_run_is_reported_with_the_sizes_to_add():
  c, n, d, loss = _isoflop_sweep([1e18, 1e19])
  small = n < _chinchilla_optimum(1e18)[0] * 0.99  # only sizes below the first budget's optimum
  keep = (c == 1e19) | small
  fit = scaling_fit.fit_isoflop(c[keep], n[keep], d[keep], loss[keep], bootstrap=10)
  assert [m['bracketed'] for m in fit['minima']] == [False, True]
  phrases = scaling_report.unbracketed_minima(fit)
  assert len(phrases) == 1 and phrases[0].startswith('at C = 1e+18')
  assert 'add larger sizes or less compute' in phrases[0]  # less compute moves N_opt down
  report = '\n'.join(scaling_report.isoflop_markdown(fit, None, {'heldout_loss': None}))
  assert '**Not a measured minimum:** at C = 1e+18' in report


def test_isoflop_fit_refuses_a_budget_without_a_minimum():
  c, n, d, loss = _isoflop_sweep([1e18, 1e19])
  with pytest.raises(ValueError, match=r'3\+ sizes each'):
    scaling_fit.fit_isoflop(c[:-5], n[:-5], d[:-5], loss[:-5])
  hump = 3.0 - 0.01 * (np.log(n) - np.log(n).mean()) ** 2  # a maximum, not a minimum
  with pytest.raises(ValueError, match='do not bend upward'):
    scaling_fit.fit_isoflop(c, n, d, hump)


# --- sweep state: run files, collect, resume --------------------------------------------------

def _specs(steps=(20,), sizes=(32, 64, 96, 128)):
  return [scaling_grid.RunSpec(f'd{d:04d}_l2_s{s:06d}', d, {'d_model': d, 'num_heads': d // 32,
                                                     'd_kv': 32, 'd_ff': 3 * d,
                                                     'num_encoder_layers': 2,
                                                     'num_decoder_layers': 2},
                          s, 1000 * d, 100 * d * d, 1e9 * d, 1280, f'steps={s}')
          for d in sizes for s in steps]


def _write_metrics(run_dir, rows):
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')


def test_collect_reads_losses_from_metrics_jsonl(tmp_path):
  out = str(tmp_path)
  spec_eval, spec_train = _specs(sizes=(32, 64))
  scaling_runner.write_run_files(out, [spec_eval, spec_train], 't5_1_1', scaling_grid.BASE_GIN, [], [])
  for spec in (spec_eval, spec_train):
    run_dir = scaling_grid.run_dir_of(out, spec.name)
    _write_metrics(run_dir, [{'step': s, 'loss': 9.0 - s / 10, 'cross_ent_loss': 8.0 - s / 10,
                              'steps_per_s': 4.0} for s in range(2, 21, 2)])
  _write_metrics(scaling_grid.run_dir_of(out, spec_eval.name),
                 [{'step': 20, 'eval/wiki_span_corruption/loss': 5.25}])
  with open(os.path.join(scaling_grid.run_dir_of(out, spec_train.name), 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 22, "lo')  # a torn last line from a killed writer
  rows = {r['name']: r for r in scaling_report.collect(out, last_k=5)}
  expected_train = np.mean([8.0 - s / 10 for s in (12, 14, 16, 18, 20)])
  a, b = rows[spec_eval.name], rows[spec_train.name]
  assert a['complete'] and a['step_reached'] == 20
  assert a['train_loss'] == pytest.approx(expected_train)
  assert (a['loss'], a['loss_source']) == (5.25, 'validation')
  assert b['loss'] == pytest.approx(expected_train) and b['loss_source'].startswith('train')
  assert a['non_embedding_params'] == spec_eval.non_embedding_params
  assert a['tokens'] == 20 * 1280


class FakeTrainer:
  """Stands in for `python -m t5x_lite.train`: logs steps to metrics.jsonl and prints progress;
  `stop_at` = (run name, step) simulates a SIGTERM there (saves and exits 0 early)."""

  def __init__(self, sweep_ref, stop_at=None, fail=None):
    self.calls, self.sweep_ref, self.stop_at, self.fail = [], sweep_ref, stop_at, fail

  def __call__(self, command, log_path, on_line):
    run_dir = os.path.dirname(log_path)
    name = os.path.basename(run_dir)
    self.calls.append((name, list(command)))
    if name == self.fail:
      on_line('error: something broke\n')
      return 1
    total = json.load(open(os.path.join(run_dir, 'run.json')))['steps']
    start = scaling_grid.last_train_step(run_dir)
    if start:
      on_line(f'Resumed from step {start} in {run_dir}/checkpoints\n')
    for step in range(start + 1, total + 1):
      if step % 5 == 0 or step == total:
        _write_metrics(run_dir, [{'step': step, 'loss': 5.0, 'cross_ent_loss': 5.0,
                                  'steps_per_s': 10.0}])
        on_line(f'step {step:>6d}/{total} | loss 5.0000 | acc 0.1 | lr 1e-2 | 1 tokens/s\n')
      if self.stop_at == (name, step):
        self.sweep_ref[0].stop_requested = True
        return -15 if step == 1 else 0  # killed in start-up, or saved and exited
    return 0


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, capsys):
  out = str(tmp_path)
  specs = _specs()
  scaling_runner.write_run_files(out, specs, 't5_1_1', scaling_grid.BASE_GIN, [], ['--gin.X=1'])
  ref = [None]
  first = FakeTrainer(ref, stop_at=(specs[2].name, 10))
  ref[0] = scaling_runner.Sweep(out, specs, runner=first)
  assert ref[0].train_all() is False
  assert [c[0] for c in first.calls] == [s.name for s in specs[:3]]
  assert [bool(ref[0].done(s)) for s in specs] == [True, True, False, False]
  printed = capsys.readouterr().out
  assert f'[1/4 {specs[0].name}' in printed and 'sweep ETA' in printed
  assert 'Rerun the same command' in printed

  second = FakeTrainer(ref)
  ref[0] = scaling_runner.Sweep(out, specs, runner=second)
  assert ref[0].train_all() is True
  assert [c[0] for c in second.calls] == [s.name for s in specs[2:]]
  assert second.calls[0][1] == first.calls[2][1]  # the same command: the trainer resumes
  assert '2 of 4 runs already complete' in capsys.readouterr().out
  assert all(ref[0].done(s) for s in specs)
  assert [r['step_reached'] for r in scaling_report.collect(out)] == [20] * 4


def test_a_stop_that_kills_a_run_in_start_up_is_a_stop_not_a_failure(tmp_path, capsys):
  out = str(tmp_path)
  specs = _specs()
  scaling_runner.write_run_files(out, specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])
  ref = [None]
  trainer = FakeTrainer(ref, stop_at=(specs[1].name, 1))
  ref[0] = scaling_runner.Sweep(out, specs, runner=trainer)
  assert ref[0].train_all() is False
  assert len(trainer.calls) == 2 and 'Rerun the same command' in capsys.readouterr().out


def test_a_failed_run_stops_the_sweep_with_its_output(tmp_path):
  out = str(tmp_path)
  specs = _specs()
  scaling_runner.write_run_files(out, specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])
  ref = [None]
  trainer = FakeTrainer(ref, fail=specs[1].name)
  ref[0] = scaling_runner.Sweep(out, specs, runner=trainer)
  with pytest.raises(scaling_grid.SweepError, match='exited with status 1(.|\n)*something broke'):
    ref[0].train_all()
  assert len(trainer.calls) == 2


def test_a_run_dir_written_with_other_settings_is_refused(tmp_path):
  specs = _specs(sizes=(32,))
  scaling_runner.write_run_files(str(tmp_path), specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])
  scaling_runner.write_run_files(str(tmp_path), specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])  # same: fine
  with pytest.raises(scaling.UsageError, match='other settings'):
    scaling_runner.write_run_files(str(tmp_path), specs, 't5_1_1', scaling_grid.BASE_GIN, [],
                            ['--gin.BATCH_SIZE=32'])


def test_a_run_whose_trainer_still_runs_is_not_started_twice(tmp_path):
  """A sweep killed outright leaves its trainer going; a rerun must not start a second one."""
  command = [sys.executable, '-c', 'import time; time.sleep(60)']
  orphan = subprocess.Popen(command)
  try:
    (tmp_path / 'train.pid').write_text(str(orphan.pid))
    cmdline = pathlib.Path(f'/proc/{orphan.pid}/cmdline')
    for _ in range(100):  # until the child has exec'd
      if b'sleep' in cmdline.read_bytes():
        break
      time.sleep(0.05)
    with pytest.raises(scaling_grid.SweepError, match='still running'):
      scaling_runner.SubprocessRunner()(command, str(tmp_path / 'train.log'), print)
      pytest.fail(f'not refused: child {orphan.poll()=} cmdline {cmdline.read_bytes()!r}')
  finally:
    orphan.kill()
    orphan.wait()
  lines = []
  assert scaling_runner.SubprocessRunner()([sys.executable, '-c', 'print("hi")'],
                                    str(tmp_path / 'train.log'), lines.append) == 0
  assert lines == ['hi\n'] and not (tmp_path / 'train.pid').exists()


def test_eta_model_learns_step_time_from_finished_runs():
  times = scaling_runner.TimeModel()
  times.add(1e9, 0.1 + 1e9 / 1e10, 30.0)
  times.add(4e9, 0.1 + 4e9 / 1e10, 50.0)
  assert times.step_seconds(8e9) == pytest.approx(0.1 + 0.8)
  assert times.startup_seconds() == 40.0
  spec = _specs(steps=(100,), sizes=(32,))[0]
  assert times.run_seconds(spec) == pytest.approx(40 + 100 * (0.1 + spec.flops_per_step / 1e10))


# --- plot and report --------------------------------------------------------------------------

def _png_size(path):
  """(width, height) from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
  data = open(path, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  length, tag = struct.unpack('>I4s', data[8:16])
  assert (tag, length) == (b'IHDR', 13)
  assert struct.unpack('>I', data[29:33])[0] == zlib.crc32(data[12:29])
  return struct.unpack('>II', data[16:24])


def test_report_writes_csv_png_and_markdown(tmp_path):
  out = str(tmp_path)
  specs = _specs(sizes=(32, 64, 96, 128, 160))
  scaling_runner.write_run_files(out, specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])
  for spec in specs:
    run_dir = scaling_grid.run_dir_of(out, spec.name)
    loss = 2.0 + 40 * spec.non_embedding_params ** -0.3
    _write_metrics(run_dir, [{'step': 20, 'loss': loss + 1, 'cross_ent_loss': loss + 1},
                             {'step': 20, 'eval/wiki_span_corruption/loss': loss}])
  fits = scaling_report.write_report(out)
  assert fits['groups']['steps=20']['alpha'] == pytest.approx(0.3, rel=1e-3)
  lines = open(os.path.join(out, 'results.csv')).read().splitlines()
  assert lines[0].split(',') == list(scaling_report.CSV_FIELDS) and len(lines) == 6
  report = open(os.path.join(out, 'report.md')).read()
  assert 'α = 0.3000' in report and 'R² = 1.0000' in report
  png = os.path.join(out, 'scaling.png')
  assert os.path.getsize(png) > 10_000  # a drawn plot, not an empty canvas
  assert _png_size(png) == (960, 780) == tuple(
      round(inches * scaling_report.DPI) for inches in scaling_report.FIGSIZE)



def test_heldout_run_is_sized_and_predicted_by_the_fit_then_scored(tmp_path, default_grid):
  """An iso-FLOP sweep over 3 budgets whose losses come from a known surface: the held-out run at
  4x the largest budget is the size nearest the fitted N_opt, its loss is predicted before it
  trains, and the report scores the prediction (summary.json, isoflop.png, report.md)."""
  base, _ = default_grid
  family = scaling_grid.FAMILIES['t5_1_1']
  out = str(tmp_path)
  specs = scaling_grid.build_grid(family, (32, 64, 96, 128, 160, 192), 'flops', [1e13, 2e13, 4e13],
                             base)
  surface = lambda spec: scaling_fit.joint_loss(CHINCHILLA, spec.non_embedding_params,
                                                spec.tokens)

  def finish(spec):  # what a trained and evaluated run leaves behind
    run_dir = scaling_grid.run_dir_of(out, spec.name)
    _write_metrics(run_dir, [{'step': spec.steps, 'loss': 99.0, 'cross_ent_loss': 99.0},
                             {'step': spec.steps, 'eval/wiki_span_corruption/loss': surface(spec)}])

  scaling_runner.write_run_files(out, specs, 't5_1_1', scaling_grid.BASE_GIN, [], [])
  for spec in specs:
    finish(spec)
  held, saved = scaling_runner.heldout_run(out, family, base, bootstrap=4)
  assert json.load(open(os.path.join(out, 'heldout.json'))) == saved
  assert held.budget == 'heldout=1.6e+14' and saved['fitted_budgets'] == [1e13, 2e13, 4e13]
  assert held.steps == round(1.6e14 / held.flops_per_step)
  # The size nearest the fitted N_opt: no other size is closer in log N.
  gap = lambda d: abs(np.log(scaling_grid.size_of(family, d, base)[2] / saved['n_opt']))
  assert all(gap(held.d_model) <= gap(d) for d in range(8, 512, 8) if d % max(1, round(d / 32)) == 0)
  # Exact losses: L(N, D) is recovered, so the prediction is the surface at the run's (N, D).
  assert saved['predicted_loss'] == pytest.approx(surface(held), rel=1e-3)
  assert scaling_runner.heldout_run(out, family, base, bootstrap=4) == (held, saved)  # read back
  assert json.load(open(os.path.join(out, 'heldout.json'))) == saved

  scaling_runner.write_run_files(out, [held], 't5_1_1', scaling_grid.BASE_GIN, [], [])
  finish(held)
  fits = scaling_report.write_report(out)
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert summary['isoflop_budgets'] == [1e13, 2e13, 4e13]  # the held-out run is not fitted
  assert summary['a'] == pytest.approx(fits['isoflop']['a'])
  assert summary['a_interval'][0] <= summary['a'] <= summary['a_interval'][1]
  assert summary['heldout_loss'] == pytest.approx(surface(held))
  assert abs(summary['heldout_rel_error']) < 1e-3
  assert os.path.getsize(os.path.join(out, 'isoflop.png')) > 10_000
  report = open(os.path.join(out, 'report.md')).read()
  assert '## Iso-FLOP profiles' in report and '**Held-out run** at C = 1.6e+14' in report

def _row(name, budget, n, tokens, loss, complete=True):
  return {'name': name, 'budget': budget, 'non_embedding_params': n, 'tokens': tokens,
          'loss': loss, 'complete': complete}


def test_plot_draws_each_group_its_points_curve_and_residuals():
  """Two token budgets: one with its own L(N) fit, one with 2 sizes drawn along the L(N, D)
  fit; each group's points and residuals are one scatter in its own colour."""
  law = lambda n, d: 1.7 + 20 * n ** -0.3 + 300 * d ** -0.4
  wiggle = iter([0.01, -0.01, 0.005, -0.005, 0.008, -0.008])
  rows = [_row(f'n{n:.0e}_d{d:.0e}', f'tokens={d:g}', n, d, law(n, d) + next(wiggle))
          for d, sizes in ((1e6, (1e5, 3e5, 1e6, 3e6)), (4e6, (1e5, 1e6)))
          for n in sizes]
  rows.append(_row('unfinished', 'tokens=4e+06', 3e5, 4e6, 9.0, complete=False))
  fits = scaling_fit.fit_rows(rows)
  assert set(fits['groups']) == {'tokens=1e+06'} and fits['joint'] is not None
  fig = scaling_report.figure(rows, fits, 'title')
  top, bottom = fig.axes
  assert top.get_xscale() == 'log' and fig.legends[0].get_title().get_text() == 'title'
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend[0].startswith('tokens=1e+06: α = ') and 'R² = ' in legend[0]
  assert legend[1] == 'tokens=4e+06' and legend[2].startswith('L(N,D) = ')
  points = {c.get_label(): c for c in top.collections}
  residuals = {c.get_label(): c for c in bottom.collections}
  assert set(points) == set(residuals) == {'tokens=1e+06', 'tokens=4e+06'}
  colors = {g: tuple(c.get_facecolor()[0]) for g, c in points.items()}
  assert colors['tokens=1e+06'] != colors['tokens=4e+06']
  own = fits['groups']['tokens=1e+06']
  joint_residual = dict(zip(fits['joint']['names'], fits['joint']['residuals']))
  for g, expected in (('tokens=1e+06', dict(zip(own['names'], own['residuals']))),
                      ('tokens=4e+06', joint_residual)):
    members = [r for r in rows if r['budget'] == g and r['complete']]
    assert np.array_equal(points[g].get_offsets(),
                          [(r['non_embedding_params'], r['loss']) for r in members])
    assert np.allclose(residuals[g].get_offsets(),
                       [(r['non_embedding_params'], expected[r['name']]) for r in members])
    assert tuple(residuals[g].get_facecolor()[0]) == colors[g]
  curves = {line.get_label(): line for line in top.get_lines()}
  assert set(curves) == {'tokens=1e+06 fit', 'tokens=4e+06 fit'}
  n, y = curves['tokens=1e+06 fit'].get_data()
  assert np.allclose(y, own['E'] + own['A'] * n ** -own['alpha'])
  n, y = curves['tokens=4e+06 fit'].get_data()  # the joint fit at D = 4e6 along its N range
  j = fits['joint']
  assert n[0] == pytest.approx(1e5) and n[-1] == pytest.approx(1e6)
  assert np.allclose(y, j['E'] + j['A'] * n ** -j['alpha'] + j['B'] * 4e6 ** -j['beta'])
  assert [tuple(line.get_ydata()) for line in bottom.get_lines()] == [(0.0, 0.0)]  # zero line
  # A residual is loss - fit: check it against the joint model's own prediction too.
  r = rows[4]
  n = r['non_embedding_params']
  predicted = j['E'] + j['A'] * n ** -j['alpha'] + j['B'] * 4e6 ** -j['beta']
  assert joint_residual[r['name']] == pytest.approx(r['loss'] - predicted, abs=1e-9)


def test_plot_without_a_complete_run_writes_nothing(tmp_path):
  path = tmp_path / 'scaling.png'
  scaling_report.plot([_row('a', 'steps=20', 1e5, 1e6, 3.0, complete=False)],
                      {'groups': {}, 'joint': None}, str(path), 'title')
  assert not path.exists()


# --- command line -----------------------------------------------------------------------------

def test_slurm_mode_writes_one_script_per_run(tmp_path, capsys):
  out = tmp_path / 'sweep'
  rc = scaling.main(['run', f'--out_dir={out}', '--sizes=32,64,96', '--steps=30,60',
                     '--mode=slurm', '--vocab_size=0', '--family=t5_1_1', '--partition=gpu', '--', '--gin.seed=1'])
  assert rc == 0
  scripts = sorted(out.glob('runs/*/job.sbatch'))
  assert len(scripts) == 6
  for script in scripts:
    text = script.read_text()
    assert f'--gin_file={script.parent}/run.gin' in text and '--gin.seed=1' in text
    assert '#SBATCH --partition=gpu' in text
    subprocess.run(['bash', '-n', str(script)], check=True)
  submit = (out / 'submit_all.sh').read_text()
  assert submit.count('sbatch ') == 6
  assert 'submit_all.sh' in capsys.readouterr().out


def test_tpu_mode_writes_one_command_file_per_run(tmp_path):
  out = tmp_path / 'sweep'
  rc = scaling.main(['run', f'--out_dir={out}', '--sizes=32,64,96', '--steps=30', '--mode=tpu',
                     '--family=t5_1_1',
                     '--vocab_size=0', '--zone=us-east5-a', '--project=p',
                     '--accelerator_type=v5litepod-4'])
  assert rc == 0
  files = sorted(out.glob('runs/*/tpu_commands.sh'))
  assert len(files) == 3
  for path in files:
    commands = [c for c in path.read_text().splitlines() if c.startswith('gcloud')]
    assert ' create ' in commands[0] and ' delete ' in commands[-1]
    assert f'--gin_file={path.parent}/run.gin' in commands[-2]  # train, after copy and install


def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
  out = tmp_path / 'sweep'
  rc = scaling.main(['run', f'--out_dir={out}', '--sizes=32,64,96', '--steps=30', '--dry_run',
                     '--family=t5_1_1'])
  assert rc == 0 and not out.exists()
  printed = capsys.readouterr().out
  assert printed.count('--- ') == 3 and 'get_vocabulary.spm_path' in printed
  commands = [line for line in printed.splitlines() if line.startswith(sys.executable)]
  assert len(commands) == 3 and all('-m t5x_lite.train --gin_file=' in c for c in commands)



def test_the_english_corpus_sweep_trains_and_tokenizes_on_it(tmp_path, capsys):
  out = tmp_path / 'sweep'
  rc = scaling.main(['run', f'--out_dir={out}', '--sizes=32,64,96', '--steps=30', '--dry_run',
                     '--corpus=english', '--family=t5_1_1'])
  assert rc == 0 and not out.exists()
  printed = capsys.readouterr().out
  assert printed.count("MIXTURE_OR_TASK_NAME = 'english_span_corruption'") == 3
  assert printed.count(f"get_vocabulary.spm_path = '{out}/vocab/offline_english-") == 3
  assert 'on english_span_corruption' in printed

@pytest.mark.parametrize('argv,message', [
    (['--steps=10', '--tokens=1e5'], 'one of --steps'),
    (['--sizes=32,44'], 'multiple of 8'),
    (['--sizes=32,88'], 'split into 3 heads'),
    (['--flops=1e12,4e12', '--sizes_per_budget=2'], 'needs 3 to 8'),
    (['--sizes=64'], 'two model sizes'),
    (['--', '--gin.t5x_lite.models.T5Config.d_model=64'], 'sets d_model'),
    (['--', '--gin.TRAIN_STEPS=5'], 'sets TRAIN_STEPS'),
    (['--steps=20,100'], 'no more than the learning-rate warm-up'),
    (['--corpus=english', '--family=decoder_only', '--',
      "--gin.MIXTURE_OR_TASK_NAME='c4_full_lm'"], 'replaces the wiki_* task'),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
  assert scaling.main(['plan', f'--out_dir={tmp_path}', *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_two_step_sweep_trains_evaluates_and_reports(tmp_path):
  """The real thing, tiny: 3 sizes x 2 steps, validation capped at 2 batches."""
  out = tmp_path / 'sweep'
  command = [sys.executable, scaling.__file__, 'run', f'--out_dir={out}', '--sizes=32,64,96',
             '--steps=2', '--eval_batches=2', '--corpus=wiki', '--', '--gin.train.log_period=1',
             '--gin.learning_rate_schedule.warmup_steps=1']
  done = subprocess.run(command, capture_output=True, text=True, cwd=scaling_runner.REPO)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  rows = scaling_report.collect(str(out))
  assert [r['loss_source'] for r in rows] == ['validation'] * 3
  assert (out / 'scaling.png').exists() and (out / 'report.md').exists()
  # Its own 4000-piece vocabulary splits the bundled corpus's training text into this many
  # tokens, counted by sentencepiece itself over the TFDS train split.
  import sentencepiece as spm
  from t5x_lite.data import corpus
  processor = spm.SentencePieceProcessor(model_file=str(next((out / 'vocab').glob('*.model'))))
  text = corpus.prepare_corpus(name='wiki_sample').as_dataset(split='train')  # what runs read
  expected = sum(len(processor.encode(x['text'].numpy().decode())) for x in text)
  assert json.load(open(out / 'summary.json'))['corpus_tokens'] == expected
  again = subprocess.run(command, capture_output=True, text=True, cwd=scaling_runner.REPO)
  assert '3 of 3 runs already complete' in again.stdout
