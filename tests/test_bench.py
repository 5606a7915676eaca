"""bench/ scripts run end to end on a tiny config and print what their docstrings promise (no
timing assertions: figures come from running them by hand, see README)."""

import json
import math

import pytest

import input_pipeline  # bench/, on pytest's pythonpath (setup.cfg)
import train_step

TINY = [
    '--gin_file=gin/models/t5_1_1/small.gin',
    '--gin.t5x_lite.models.T5Config.d_model=32',
    '--gin.t5x_lite.models.T5Config.num_heads=2',
    '--gin.t5x_lite.models.T5Config.d_kv=8',
    '--gin.t5x_lite.models.T5Config.d_ff=64',
    '--gin.t5x_lite.models.T5Config.num_encoder_layers=1',
    '--gin.t5x_lite.models.T5Config.num_decoder_layers=1',
    '--gin.t5x_lite.models.T5Config.vocab_size=512',
]


def last_json(capsys):
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_step_bench_times_ours_and_transformers_on_the_same_model(capsys, tmp_path):
  assert train_step.main([*TINY, '--batch_size=2', '--inputs_length=16', '--targets_length=8',
                          '--steps=2', '--compare=hf', f'--profile={tmp_path}']) == 0
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  # transformers runs the same model from the same weights: same parameter count (untied head
  # included) and the same loss on the first batch.
  assert result['hf_params'] == result['params']
  assert result['hf_first_loss'] == pytest.approx(result['first_cross_entropy'], abs=1e-4)
  # Same optimizer and learning rate: after three steps on the batch the losses still agree.
  assert result['hf_loss'] == pytest.approx(result['last_cross_entropy'], rel=1e-3)
  assert result['last_cross_entropy'] < result['first_cross_entropy'] - 0.01
  assert len(result['step_times_s']) == len(result['hf_step_times_s']) == 2
  assert result['tokens_per_s'] == pytest.approx(2 * 24 / result['step_s'])
  assert result['speedup_vs_hf'] == pytest.approx(result['hf_step_s'] / result['step_s'])
  assert 0 < result['mfu'] < 1 and math.isfinite(result['loss'] + result['hf_loss'])
  assert result['memory_gbytes_per_s'] > 0 and result['peak_gflops_per_s'] > 0
  assert result['compiler_options'] and 'ynn' in json.dumps(result['compiler_options'])
  # --profile prints the ops that took the most time from the trace it wrote.
  profile_lines = out.split('profile:')[1].splitlines()[1:4]
  assert all(float(line.split()[0]) >= 0 for line in profile_lines)


def test_train_step_bench_times_a_decoder_only_model(capsys):
  """What bench/maxtext_compare.py runs for our side: targets only, tokens = batch x length."""
  assert train_step.main([*TINY, "--gin.t5x_lite.models.T5Config.architecture='decoder_only'",
                          '--gin.t5x_lite.models.T5Config.num_encoder_layers=0',
                          '--batch_size=2', '--targets_length=8', '--steps=2']) == 0
  result = last_json(capsys)
  assert result['lengths'] == {'targets': 8} and len(result['step_times_s']) == 2
  assert result['tokens_per_s'] == pytest.approx(2 * 8 / result['step_s'])
  assert result['last_cross_entropy'] < result['first_cross_entropy']


def test_input_pipeline_bench_compares_with_the_train_step(capsys):
  assert input_pipeline.main([*TINY, '--batch_size=4', '--inputs_length=64',
                              '--targets_length=16', '--batches=5', '--step_s=2.0']) == 0
  result = last_json(capsys)
  assert result['train_rows_per_s'] == 2.0
  assert result['ratio'] == pytest.approx(result['rows_per_s'] / 2.0)
  # Span corruption packs at least one example per row, and most positions are real tokens.
  assert result['examples_per_row'] >= 1 and 0.5 < result['fill'] <= 1
