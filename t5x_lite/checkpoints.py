"""Orbax checkpoints: async save, keep-N, resume from the newest good step, restore onto any mesh.

Each step directory holds two items: ``state`` (the train state pytree, sharded arrays) and ``data``
(JSON: the input pipeline's position and what produced it). Restoring takes abstract targets carrying
the *current* shardings, so a checkpoint written on one mesh loads onto another.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
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
