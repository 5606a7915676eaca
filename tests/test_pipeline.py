"""t5x_lite.data.pipeline: seeded, resumable, per-host batches in T5's encoder-decoder layout.

Building a seqio pipeline costs seconds of tf.data tracing, so the tests share one reference run.
"""

import numpy as np
import pytest

from t5x_lite import tasks
from t5x_lite.data import pipeline

tasks.register_all()  # the default vocabulary

TASK = 'wiki_span_corruption'
LENGTHS = {'inputs': 512, 'targets': 114}


def take(n, **kwargs):
  args = dict(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, batch_size=4,
              split='validation', seed=7)
  args.update(kwargs)
  it = pipeline.get_dataset(**args)
  return [next(it) for _ in range(n)]


@pytest.fixture(scope='module')
def reference():
  """The training configuration: packed and shuffled."""
  return take(6)


@pytest.fixture(scope='module')
def unshuffled():
  """The cheapest pipeline to build: in order, unpacked."""
  return take(1, shuffle=False, pack=False)[0]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_packed_batches_have_t5_shapes_and_segment_ids(reference):
  batch = reference[0]
  assert batch['encoder_input_tokens'].shape == (4, 512)
  for key in ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights'):
    assert batch[key].shape == (4, 114)
  assert batch['encoder_segment_ids'].shape == (4, 512)
  assert batch['decoder_segment_ids'].shape == (4, 114)
  assert batch['encoder_segment_ids'].max() >= 1
  # Teacher forcing: decoder inputs are the targets shifted right within each segment.
  inside = batch['decoder_positions'][:, 1:] > 0
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:][inside],
                                batch['decoder_target_tokens'][:, :-1][inside])


def test_a_second_run_resumed_at_start_batch_sees_what_the_first_saw(reference):
  """Same seed → same shuffle and span-corruption noise, so a restart continues the stream."""
  assert_same(take(2, start_batch=4), reference[4:6])


def test_another_seed_draws_other_noise(unshuffled):
  other = take(1, shuffle=False, pack=False, seed=8)[0]
  assert not np.array_equal(other['encoder_input_tokens'], unshuffled['encoder_input_tokens'])


def test_unpacked_batches_have_no_segment_ids(unshuffled):
  assert 'encoder_segment_ids' not in unshuffled
  assert unshuffled['encoder_input_tokens'].shape == (4, 512)


def test_hosts_read_their_own_shards_and_together_make_the_one_host_batch():
  kwargs = dict(batch_size=8, num_data_shards=4, pack=False)
  whole = take(2, **kwargs)
  host0 = take(2, data_shards=[0, 1], **kwargs)
  host1 = take(2, data_shards=[2, 3], **kwargs)
  assert host0[0]['encoder_input_tokens'].shape == (4, 512)
  assert not np.array_equal(host0[0]['encoder_input_tokens'], host1[0]['encoder_input_tokens'])
  for w, h0, h1 in zip(whole, host0, host1):
    for k in w:
      np.testing.assert_array_equal(w[k], np.concatenate([h0[k], h1[k]]))
  # Resuming on another host count reads the same examples from the same position.
  assert_same(take(1, data_shards=[2, 3], start_batch=1, **kwargs), host1[1:])


@pytest.mark.parametrize('kwargs, message', [
    (dict(mixture_or_task_name='wiki_span_corruptoin'),
     r"Did you mean \['wiki_span_corruption'.*import tasks"),
    (dict(batch_size=6, num_data_shards=4), 'multiple of the number of data shards'),
    (dict(data_shards=[2], num_data_shards=2), r'data_shards must be .* in \[0, 2\)'),
    (dict(task_feature_lengths={'inputs': 1, 'targets': 114}), 'inputs_length must be >= 2'),
    (dict(task_feature_lengths={'inputs': 512, 'targets': 64}), 'at least 114'),
    (dict(task_feature_lengths={'inputs': 512}), r"needs \['targets'\]"),
    (dict(task_feature_lengths={'inputs': 512, 'targets': 0}), 'positive ints'),
    (dict(task_feature_lengths={'inputs': 512, 'targets': 114, 'labels': 8}), 'does not output'),
    (dict(split='test'), "no split 'test'"),
    (dict(start_batch=-1), 'start_batch'),
])
def test_bad_arguments_are_rejected_with_advice(kwargs, message):
  args = dict(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, batch_size=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    pipeline.get_dataset(**args)
