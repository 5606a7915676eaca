"""tasks/: the span-corruption tasks register offline and produce T5-shaped examples."""

import os

import numpy as np
import pytest
import seqio

from t5x_lite import paths
from t5x_lite.data import objectives
from t5x_lite.tasks import pretraining

LENGTHS = {'inputs': 512, 'targets': 114}


def test_import_registers_both_tasks():
  names = seqio.TaskRegistry.names()
  assert pretraining.WIKI_TASK in names and pretraining.C4_TASK in names


def test_register_all_can_run_again_and_reads_nothing(tmp_path):
  """Re-registration (as the trainer does after parsing gin) replaces tasks and stays offline."""
  try:
    pretraining.register_all(wiki_data_dir=str(tmp_path / 'wiki'), c4_data_dir=str(tmp_path / 'c4'))
    pretraining.register_all(wiki_data_dir=str(tmp_path / 'wiki'), c4_data_dir=str(tmp_path / 'c4'))
    assert os.listdir(tmp_path) == []
  finally:
    pretraining.register_all()


def test_wiki_task_follows_t5_span_corruption():
  task = seqio.get_mixture_or_task(pretraining.WIKI_TASK)
  assert task.output_features['inputs'].required is False
  assert all(f.add_eos for f in task.output_features.values())
  _, targets_length = objectives.random_spans_helper(512, 0.15, 3.0, 1, 1)
  assert targets_length == LENGTHS['targets']

  ds = task.get_dataset(LENGTHS, split='validation', shuffle=False, seed=0)
  examples = list(ds.take(12).as_numpy_iterator())
  vocab_size = task.output_features['targets'].vocabulary.vocab_size
  assert examples
  for ex in examples:
    assert len(ex['inputs']) <= 512 and len(ex['targets']) <= 114
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1   # EOS
    assert ex['targets'][0] == vocab_size - 1                   # starts with <extra_id_0>
    assert (ex['inputs'] >= vocab_size - 100).sum() == (ex['targets'] >= vocab_size - 100).sum()
  # Chunks are sized so that full chunks fill the inputs exactly (no padding).
  assert np.median([len(ex['inputs']) for ex in examples]) == 512


def test_c4_task_without_data_says_how_to_prepare_it():
  if os.path.exists(os.path.join(paths.tfds_data_dir(), 'c4')):
    pytest.skip('C4 is prepared on this machine.')
  task = seqio.get_mixture_or_task(pretraining.C4_TASK)
  with pytest.raises(FileNotFoundError, match=r'tfds build c4/en --data_dir=.*T5X_LITE_DATA_DIR'):
    task.get_dataset(LENGTHS, split='train')
