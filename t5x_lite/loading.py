"""Loading a trained model from a path: the one way train (INITIAL_CHECKPOINT_PATH), eval, infer,
convert and the scaling sweeps all do it."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from t5x_lite import checkpoints, gin_utils, trainer
from t5x_lite.models import T5Config


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  config: T5Config
  graphdef: Any           # None when the caller gave `abstract_params` (it has its own graph)
  params: Any             # a pure dict: numpy arrays ('host') or arrays placed on their shardings
  step_dir: epath.Path    # the checkpoint step the params came from

  @property
  def step(self) -> int:
    return int(self.step_dir.name)

  @property
  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, jax.tree.map(jnp.asarray, self.params))


def load_model(config_or_gin: T5Config | str | Sequence[str], path: str, *,
               placement: str = 'device', abstract_params: Any = None) -> LoadedModel:
  """The model of `config_or_gin` (a T5Config, or gin file(s) whose MODEL_CONFIG is read) with the
  params of the train-state checkpoint at `path`: a MODEL_DIR, its checkpoints/ or one step (a
  damaged newest step falls back to the one before, as a resume does).

  `placement`: 'device' puts the params whole on the first device, read straight into device
  memory; 'host' keeps numpy arrays. `abstract_params` with shardings (a training layout, e.g.
  `StateSetup.abstract_state['params']`) overrides it and may be passed under `jax.set_mesh`; the
  model graph is then the caller's. A missing checkpoint or a missing, extra or misshapen param is
  a UsageError naming it.
  """
  if isinstance(config_or_gin, str):
    config_or_gin = [config_or_gin]
  config = (config_or_gin if isinstance(config_or_gin, T5Config)
            else config_from_gin(config_or_gin))
  if placement not in ('device', 'host'):
    raise ValueError(f"placement must be 'device' or 'host', got {placement!r}")
  graphdef, abstract = None, abstract_params
  if abstract_params is None:  # not under a mesh: there nnx.eval_shape reads names as mesh axes
    graphdef, abstract, _ = trainer.abstract_params_and_axes(config)
    if placement == 'device':
      abstract = checkpoints.on_one_device(abstract)
  try:
    params, step_dir = checkpoints.load_params(path, abstract)
  except (FileNotFoundError, ValueError) as e:
    raise gin_utils.UsageError(str(e)) from e
  return LoadedModel(config, graphdef, params, step_dir)


def config_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> T5Config:
  """The MODEL_CONFIG that `gin_files` (+ overrides) define; replaces the global gin config."""
  gin.clear_config()
  gin_utils.parse(list(gin_files), list(bindings))
  config = gin_utils.query_macro('MODEL_CONFIG')
  if not isinstance(config, T5Config):
    raise gin_utils.UsageError(f'MODEL_CONFIG is {config!r}, not a t5x_lite.models.T5Config.')
  return config
