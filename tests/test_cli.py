"""`--help` on every entry point: exit 0, the command's flags, gin files and macros where it reads
gin, and neither JAX nor TensorFlow imported to print it (which is what kept it at 6-17 s)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from t5x_lite import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A flag each command's help must show (the run parses with the same parser).
FLAGS = {'train': '--coordinator_address', 'eval': '--checkpoint_dir', 'plan': '--target',
         'infer': '--num_beams', 'convert': '--from_hf', 'vocab': '--model_prefix',
         'tasks': 'show', 'curves': 'MODEL_DIR'}
GIN_COMMANDS = ('train', 'eval', 'plan')


def _help(args: list[str]) -> tuple[str, set[str]]:
  """stdout of `python -X importtime ARGS --help`, and the top-level packages it imported."""
  done = subprocess.run([sys.executable, '-X', 'importtime', *args, '--help'], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  imported = {m.group(1).split('.')[0] for m in
              re.finditer(r'^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)', done.stderr, re.M)}
  return done.stdout, imported


@pytest.mark.parametrize('command', sorted(cli.MODULES))
def test_help_prints_the_flags_without_jax_or_tensorflow(command):
  module = 't5x_lite.tasks' if command == 'tasks' else cli.MODULES[command]
  out, imported = _help(['-m', module])
  assert out.startswith('usage: ') and FLAGS[command] in out, out
  assert not imported & {'jax', 'tensorflow', 'seqio', 'flax'}, sorted(imported)
  if command in GIN_COMMANDS:
    assert 'gin/runs/pretrain_tiny.gin' in out and 'gin/models/t5_1_1/' in out, out
    assert all(macro in out for macro in ('MODEL_DIR', 'TRAIN_STEPS', 'MIXTURE_OR_TASK_NAME'))


def test_console_scripts_answer_help_the_same_way():
  bin_dir = os.path.dirname(sys.executable)
  for script, command in (('t5x-train', 'train'), ('t5x-plan', 'plan'), ('t5x-vocab', 'vocab')):
    path = os.path.join(bin_dir, script)
    if not os.path.exists(path):
      pytest.skip(f'{script} is not installed next to {sys.executable}')
    out, imported = _help([path])
    assert FLAGS[command] in out and 'jax' not in imported, out


def test_subcommand_help_and_help_after_a_bad_value():
  out, _ = _help(['-m', 't5x_lite.tasks', 'show'])
  assert out.startswith('usage: python -m t5x_lite.tasks show') and '--noise_density' in out
  out, _ = _help(['-m', 't5x_lite.train', '--num_processes=two'])
  assert out.startswith('usage: ') and '--num_processes' in out


def test_parse_errors_are_one_line_usage_errors():
  with pytest.raises(cli.gin_utils.UsageError, match=r'did you mean --num_beams\?'):
    cli.parser('infer').parse_args(['--mode=predict', '--checkpoint_dir=c', '--input_file=i',
                                    '--output_file=o', '--num_beam=2'])
