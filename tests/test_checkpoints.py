"""Orbax checkpoints: round trip, keep-N, restore onto another sharding, fall back past a broken step."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
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
