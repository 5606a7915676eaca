"""Orbax checkpoints: async save, keep-N, resume from the newest good step, restore onto any mesh.

Each step directory holds two items: ``state`` (the train state pytree, sharded arrays) and ``data``
(JSON: the input pipeline's position and what produced it). Restoring takes abstract targets carrying
the *current* shardings, so a checkpoint written on one mesh loads onto another.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin owner of an `ocp.CheckpointManager` with the policy T5X users expect."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'data'))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data: dict, force: bool = True) -> bool:
    """Starts an async save of `state` (device arrays) and `data` (JSON-able dict)."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
        force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores the newest restorable step (or `step`) onto `abstract_state`'s shardings.

    A step that fails to restore (deleted files, truncated arrays) is reported and skipped in favour
    of the next older one, because Orbax lists any fully named step directory as complete.
    Returns None when there is no checkpoint at all.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    errors = []
    for s in steps:
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        msg = f'checkpoint step {s} in {self.directory} could not be restored ({type(e).__name__}: {e})'
        log.warning('%s; trying an older one', msg)
        print(f'WARNING: {msg.splitlines()[0][:300]}; trying an older one', flush=True)
        errors.append(msg)
        continue
      return s, restored['state'], dict(restored['data'] or {})
    if errors:
      raise RuntimeError(
          f'No checkpoint in {self.directory} could be restored:\n  ' + '\n  '.join(errors) +
          '\nMove the directory aside (or point MODEL_DIR elsewhere) to start fresh.')
    return None

  def wait(self):
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings: what Orbax restores onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def find_step_dir(path: str) -> epath.Path:
  """The step directory `path` names: a step dir itself (holding `state/`), or the newest step of a
  checkpoints dir or of a MODEL_DIR (its `checkpoints/`)."""
  p = epath.Path(path)
  if (p / 'state').is_dir():
    return p
  for root in (p / 'checkpoints', p):
    steps = sorted((int(d.name) for d in root.iterdir()
                    if d.name.isdigit() and (d / 'state').is_dir()),
                   reverse=True) if root.is_dir() else []
    if steps:
      return root / str(steps[0])
  raise FileNotFoundError(
      f'no checkpoint at {path}: expected a step directory (with state/), a checkpoints/ '
      'directory of steps, or a MODEL_DIR holding one.')


def load_params(path: str, abstract_params: Any) -> Any:
  """Only the `params` of the train state checkpointed at `path` (see `find_step_dir`): what
  fine-tuning and conversion start from. Leaves of `abstract_params` with a sharding come back as
  arrays placed on it, others as numpy. The checkpoint's names and shapes must match exactly (Orbax's
  partial restore would silently leave a missing param as a placeholder): ValueError otherwise.
  """
  step_dir = find_step_dir(path)
  state_dir = (step_dir / 'state').absolute()
  want = {_key(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  with ocp.PyTreeCheckpointer() as ckptr:
    saved_tree = ckptr.metadata(state_dir).item_metadata.tree
    if 'params' not in saved_tree:
      raise ValueError(f'{state_dir} holds no params (keys: {sorted(saved_tree)}).')
    saved = {_key(p): tuple(x.shape)
             for p, x in jax.tree_util.tree_flatten_with_path(saved_tree['params'])[0]}
    for problem, names in (('lacks', sorted(set(want) - set(saved))),
                           ('has extra', sorted(set(saved) - set(want)))):
      if names:
        raise ValueError(f'{step_dir} {problem} params for this model config, e.g. {names[:3]}; '
                         'check that the model gin file describes the model that wrote it.')
    for name, shape in want.items():
      if saved[name] != shape:
        raise ValueError(f'{step_dir}: params/{name} has shape {saved[name]}, the model config '
                         f'implies {shape}; check the model gin file.')
    target = {'params': abstract_params}
    restore_args = jax.tree.map(
        lambda x: (ocp.ArrayRestoreArgs(sharding=x.sharding) if getattr(x, 'sharding', None)
                   else ocp.RestoreArgs(restore_type=np.ndarray)), target)
    restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return restored['params']


def _key(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
