"""Orbax checkpoints: round trip, keep-N, restore onto another sharding, fall back past a broken step."""

import errno
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from t5x_lite import checkpoints, partitioning


def _state(x):
  return {'step': jnp.asarray(x, jnp.int32), 'params': {'w': jnp.full((4, 8), float(x))}}


def _abstract(mesh, spec=P()):
  shard = NamedSharding(mesh, spec)
  return {'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
          'params': {'w': jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=shard)}}


def test_round_trip_keeps_newest_n_and_data_position(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {'batch': step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  mesh = partitioning.create_mesh({'data': -1})
  step, state, data, _ = ckpt.restore(_abstract(mesh))
  ckpt.close()
  assert step == 3 and data == {'batch': 3}
  np.testing.assert_array_equal(state['params']['w'], np.full((4, 8), 3.0))
  assert state['params']['w'].sharding == NamedSharding(mesh, P())


def test_empty_directory_restores_nothing(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'none'))
  assert ckpt.restore(_abstract(partitioning.create_mesh({'data': -1}))) is None
  ckpt.close()


def test_a_step_with_missing_files_falls_back_to_the_previous_one(tmp_path, capsys):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, _state(1), {'batch': 1})
  ckpt.save(2, _state(2), {'batch': 2})
  ckpt.close()
  # Orbax still lists step 2 once its array data is gone.
  shutil.rmtree(tmp_path / '2' / 'state')
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  assert ckpt.latest_step() == 2
  step, state, data, _ = ckpt.restore(_abstract(partitioning.create_mesh({'data': -1})))
  ckpt.close()
  assert step == 1 and data['batch'] == 1
  assert float(state['params']['w'][0, 0]) == 1.0
  assert 'step 2' in capsys.readouterr().out


def test_the_last_good_step_is_the_newest_committed_save(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=1)
  assert ckpt.last_good_step is None
  ckpt.save(1, _state(1), {'batch': 1})
  assert ckpt.last_good_step is None  # in flight: not yet known to be on disk
  ckpt.wait()
  assert ckpt.last_good_step == 1
  ckpt.save(2, _state(2), {'batch': 2})
  ckpt.close()
  assert ckpt.last_good_step == 2 and ckpt.all_steps() == [2]


def test_a_step_whose_optimizer_state_is_not_finite_is_not_restored(tmp_path, capsys,
                                                                    monkeypatch):
  tmp_path = tmp_path / 'run'  # the failed step is set aside next to it
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  bad = {**_state(2), 'opt_state': {'mu': jnp.full((4, 8), jnp.nan)}}
  ckpt.save(1, {**_state(1), 'opt_state': {'mu': jnp.zeros((4, 8))}}, {'batch': 1})
  with monkeypatch.context() as m:  # as an older version, which saved such states, would have
    m.setattr(checkpoints, 'check_finite', lambda tree: None)
    ckpt.save(2, bad, {'batch': 2})
  ckpt.close()
  mesh = partitioning.create_mesh({'data': -1})
  abstract = {**_abstract(mesh), 'opt_state': _abstract(mesh)['params']}
  abstract['opt_state'] = {'mu': abstract['opt_state']['w']}
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  step, _, _, _ = ckpt.restore(abstract)
  ckpt.close()
  assert step == 1 and ckpt.last_good_step == 1
  assert 'non-finite values in opt_state/mu' in capsys.readouterr().out


def test_readers_fall_back_past_a_damaged_step_and_move_nothing(tmp_path, capsys):
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'checkpoints'), keep=3)
  for step in (1, 2):
    ckpt.save(step, _state(step), {'batch': step})
  ckpt.close()
  shutil.rmtree(tmp_path / 'checkpoints' / '2' / 'state' / 'd')
  abstract = {'w': jax.ShapeDtypeStruct((4, 8), jnp.float32)}
  params, source = checkpoints.load_params(str(tmp_path), abstract)
  assert source.name == '1' and float(params['w'][0, 0]) == 1.0
  assert 'checkpoints/2 could not be read' in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2']
  # Named explicitly, the damaged step is an error, not a silent substitute.
  with pytest.raises(ValueError, match=r'checkpoints/2 cannot be read'):
    checkpoints.load_params(str(tmp_path / 'checkpoints' / '2'), abstract)


@pytest.mark.parametrize('code, advice', [
    (errno.ENOSPC, 'Free space'), (errno.EFBIG, 'Free space'), (errno.EACCES, 'writable'),
    (errno.EEXIST, 'Another run may be writing'), (errno.ENOENT, 'Another run may be writing'),
    (None, 'Fix the cause above')])
def test_save_failure_advice_follows_the_cause(code, advice):
  error = OSError('step 3: something')
  error.errno = code
  assert checkpoints.save_failure_advice(error).startswith(advice) or \
      advice in checkpoints.save_failure_advice(error)


def test_a_state_that_is_not_finite_is_never_written(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, _state(1), {'batch': 1})
  with pytest.raises(ValueError, match=r'non-finite values in params/w'):
    ckpt.save(2, {**_state(2), 'params': {'w': jnp.full((4, 8), jnp.inf)}}, {'batch': 2})
  ckpt.close()
  assert ckpt.all_steps() == [1] and ckpt.last_good_step == 1


def _numpy_sums(x: np.ndarray) -> list[int]:
  """The checksum by hand: the array's bytes as little-endian words (uint32; narrower types
  widened), their sum mod 2^32, and the sum of w·0x9E3779B1 xor (that >> 15), mod 2^32."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  words = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint64)
  words = words.ravel()
  mixed = (words * 0x9E3779B1) % 2**32
  mixed ^= mixed >> 15
  return [int(words.sum() % 2**32), int(mixed.sum() % 2**32)]


def test_checksums_match_numpy_and_do_not_depend_on_the_sharding():
  rng = np.random.default_rng(0)
  tree = {'f32': rng.normal(size=(16, 24)).astype(np.float32),
          'bf16': jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16),
          'i32': rng.integers(-2**31, 2**31 - 1, size=(40,), dtype=np.int32),
          'flag': np.array([True, False, True])}
  want = {k: _numpy_sums(np.asarray(v)) for k, v in tree.items()}
  assert checkpoints.checksums(tree) == want
  n = len(jax.devices())
  mesh = partitioning.create_mesh({'data': n})
  for spec in (P('data'), P(None, 'data'), P()):  # row shards, column shards, replicated
    placed = jax.device_put(tree['f32'], NamedSharding(mesh, spec)) if 24 % n == 0 else None
    if placed is not None:
      assert checkpoints.checksums({'f32': placed}) == {'f32': want['f32']}
  flipped = tree['f32'].copy()
  flipped.view(np.uint32)[3, 5] ^= 1 << 17
  assert checkpoints.checksums({'f32': flipped}) != {'f32': want['f32']}
