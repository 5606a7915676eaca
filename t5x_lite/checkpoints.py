"""Orbax checkpoints: async save, keep-N, resume from the newest good step, restore onto any mesh.

Each step directory holds three items: ``state`` (the train state pytree, sharded arrays), ``data``
(JSON: what produced the run and where its input is) and ``iterator`` (each data shard's tf.data
iterator position, written by the hosts that read it). Restoring takes abstract targets carrying the
*current* shardings, so a checkpoint written on one mesh loads onto another.

Orbax lists any fully named step directory as complete, so restoring validates: a step that fails to
load, or whose params are not finite, is moved aside to ``corrupt_checkpoints/`` (kept, not deleted)
and the next older step is tried. A checkpoint of a different model or optimizer is a usage error,
not corruption. Old steps are deleted only after a newer save has been committed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import re
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import storage
from t5x_lite.gin_utils import UsageError

# Orbax warns `Metadata file does not exist: STEP/state/_CHECKPOINT_METADATA` for every item it
# restores: the manager writes that file per step, not per item, so its absence there is normal
# (a step without its own is still reported).
ITEMS = ('state', 'data', 'iterator')


def _not_item_metadata_warning(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  prefix = 'Metadata file does not exist: '
  parts = message[len(prefix):].rstrip('/').split('/')
  return not (message.startswith(prefix) and len(parts) >= 2 and parts[-2] in ITEMS)


logging.getLogger('absl').addFilter(_not_item_metadata_warning)

log = logging.getLogger(__name__)


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores a `pipeline.DataIterator`'s position (each host writes its own shards)."""

  def save(self, directory: epath.Path, args: 'DataIteratorSave'):
    with storage.staged(directory, upload=True) as local:  # tf.data writes local files
      args.iterator.save(local)

  def restore(self, directory: epath.Path, args: 'DataIteratorRestore'):
    with storage.staged(directory, upload=False) as local:
      args.iterator.restore(local)
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


class Restored(NamedTuple):
  step: int
  state: Any
  data: dict
  iterator: Any  # what make_iterator returned, positioned where the checkpoint left off


class Checkpointer:
  """Owner of an `ocp.CheckpointManager` with the policy T5X users expect, plus validation."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = storage.absolute(directory)
    self.keep = keep
    self._pending = None  # the step of a save not yet known to be committed
    # The newest step known to restore: the one restored at start, then each committed save (a
    # saved state is finite: the train step never keeps a non-finite one). Never pruned.
    self.last_good_step = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # pruned here, once a newer save is known to be committed
        create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=ITEMS)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def saving(self) -> bool:
    """A save has been started and is not yet known to be committed."""
    return self._pending is not None

  def save(self, step: int, state: Any, data: dict, iterator: Any = None) -> None:
    """Starts an async save of `state` (device arrays), `data` (JSON-able) and `iterator`'s
    position (written before this returns, so the caller may advance it at once).

    Raises OSError when the previous save or this one cannot be written (a full disk, say); the
    newest committed step is untouched. ValueError, and nothing written, when `state` holds a NaN
    or Inf: every committed step restores (the train step never keeps such a state; this is the
    last line of defence)."""
    self.wait()
    check_finite(state)
    if jax.process_count() == 1:
      data = {**data, 'checksums': checksums(state)}
    items = {'state': ocp.args.StandardSave(state)}
    if iterator is not None:
      items['iterator'] = DataIteratorSave(iterator)
      data = {**data, 'input_position_saved': True}
    items['data'] = ocp.args.JsonSave(data)
    self._pending = step
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(step, e) from e

  def wait(self) -> None:
    """Blocks until pending saves are committed, then prunes to keep-N. OSError when the pending
    save failed (Orbax may only log it): the step is then not on disk, and older ones are kept."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(self._pending, e) from e
    if (self._pending is not None and jax.process_index() == 0
        and not (self.directory / str(self._pending)).is_dir()):
      raise OSError(f'step {self._pending}: not committed (see the log above; did another run '
                    'write to or clean this directory?)')
    if self._pending is not None:
      self.last_good_step = self._pending
    self._pending = None
    steps = self.all_steps()
    if self.keep and jax.process_index() == 0:
      for s in steps[:-self.keep]:
        if s != self.last_good_step:
          self._manager.delete(s)

  def restore(self, abstract_state: Any,
              make_iterator: Callable[[dict], Any] | None = None) -> Restored | None:
    """Restores the newest good step onto `abstract_state`'s shardings; None if there is none.

    `make_iterator(data)` builds the input pipeline the checkpoint's data state describes; its
    position is then restored too (or, for a checkpoint without one, replayed). A step that fails
    to restore is reported and the next older one tried; once one restores, the failed newer steps
    are moved aside. If none restores, nothing is moved and the UsageError lists each cause. UsageError when the
    checkpoint holds a different model or optimizer (shapes or names differ).
    """
    failed = []
    _quiet_abandoned_reads()
    for s in sorted(self.all_steps(), reverse=True):
      step_dir = self.directory / str(s)
      try:
        try:
          saved_tree = _saved_tree(step_dir / 'state')
        except Exception:  # pylint: disable=broad-except
          saved_tree = None  # unreadable: the restore below reports it as corruption
        if saved_tree is not None:
          _check_matches(saved_tree, abstract_state, f'MODEL_DIR checkpoint step {s} ({step_dir})',
                         'Use a new MODEL_DIR for this config, or the gin files that wrote it.')
        data = dict(self._manager.restore(
            s, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data'] or {})
        saved_sums = data.pop('checksums', None)
        iterator = make_iterator(data) if make_iterator else None
        items = {'state': ocp.args.StandardRestore(abstract_state)}
        has_position = (step_dir / 'iterator').is_dir()
        if data.get('input_position_saved') and not has_position:
          raise FileNotFoundError(f'{step_dir / "iterator"} (the input position) is missing')
        if iterator is not None and has_position:
          items['iterator'] = DataIteratorRestore(iterator)
        state = self._manager.restore(s, args=ocp.args.Composite(**items))['state']
        check_finite(state)
        check_checksums(state, saved_sums)
      except UsageError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        cause = _read_failure(e)
        print(f'WARNING: checkpoint step {s} in {self.directory} could not be restored '
              f'({cause}); trying an older one', flush=True)
        log.debug('checkpoint step %d not restorable', s, exc_info=e)
        failed.append((s, cause))
        continue
      for bad, cause in failed:
        self._set_aside(bad, cause)
      self.last_good_step = s
      if iterator is not None and not has_position:
        batches = int(data.get('batch', s))
        print(f'WARNING: checkpoint step {s} holds no input position; replaying {batches} '
              'batches to reach it', flush=True)
        iterator.skip(batches)
      return Restored(s, state, data, iterator)
    if failed:
      self._manager.close()  # let Orbax's threads end now, not complain at interpreter exit
      raise UsageError(
          f'no checkpoint in {self.directory} could be restored ('
          + '; '.join(f'step {s}: {cause}' for s, cause in failed)
          + '). Nothing was changed; move the directory aside or point MODEL_DIR elsewhere to '
          'start fresh.')
    return None

  def _set_aside(self, step: int, cause: str) -> None:
    """Moves a step that does not restore (when an older one does) out of Orbax's view, so the
    run can save that step again; kept for inspection, not deleted. UsageError if it cannot be
    moved: training on would save over it or next to it."""
    aside = self.directory.parent / 'corrupt_checkpoints' / f'{step}.{time.strftime("%Y%m%d-%H%M%S")}'
    suffix = 1
    while aside.exists():  # two set-asides of one step in one second
      aside, suffix = aside.with_name(f'{aside.name.split("~")[0]}~{suffix}'), suffix + 1
    if jax.process_index() == 0:
      try:
        storage.move_tree(self.directory / str(step), aside)
      except OSError as e:
        self._manager.close()
        raise UsageError(
            f'checkpoint step {step} in {self.directory} could not be restored ({cause}) nor '
            f'moved aside to {aside.parent} ({type(e).__name__}: {e.strerror or e}); move '
            f'{self.directory / str(step)} out of the way yourself (or fix the permissions of '
            'MODEL_DIR) and rerun the same command.') from e
      print(f'WARNING: moved checkpoint step {step} to {aside}', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self._manager.reload()

  def close(self):
    self.wait()
    # Orbax's close() leaves its start-up clean-up of temporary directories running (a private
    # future); a process that exits right after would see it die at shutdown with a traceback.
    finish_cleanup = getattr(self._manager, '_maybe_await_cleanup_tmp_directory', None)
    if finish_cleanup is not None:
      finish_cleanup()
    self._manager.close()


def _quiet_abandoned_reads() -> None:
  """When a step fails to restore (which the caller reports in one line), TensorStore still
  completes the reads Orbax abandoned and reports each to the closed asyncio loop: an 'Event loop is
  closed' traceback and a 'Task exception was never retrieved' log per array, even after the run
  went on. Drop exactly those two (installed before the first read, since they can come before the
  failure reaches us); every other unraisable error and asyncio log still shows."""
  if getattr(sys.unraisablehook, 'quiets_abandoned_reads', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(
      lambda record: 'Task exception was never retrieved' not in record.getMessage())


def _read_failure(error: Exception) -> str:
  """One short line for a failed read: the exception's first line without TensorStore's spec."""
  first = (str(error).splitlines() or [''])[0].split(' [tensorstore_spec')[0]
  return f'{type(error).__name__}: {first}'[:240]


def _save_error(step: int | None, error: Exception) -> OSError:
  """An OSError saying which step failed and why, carrying the OS errno when there is one (the
  advice depends on it)."""
  out = OSError(f'step {step}: {_cause(error)}')
  out.errno = _errno(error)
  return out


def _errno(error: BaseException | None) -> int | None:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno
    found = re.findall(r"os_error_code='(\d+)'", str(error))
    if found:
      return int(found[-1])
    if 'already exists' in str(error):
      return errno.EEXIST
    error = error.__cause__ or error.__context__
  return None


def save_failure_advice(error: OSError) -> str:
  """What to do about a failed save, by its cause: only a full disk is fixed by freeing space."""
  code = getattr(error, 'errno', None)
  if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
    return 'Free space on that disk (or move MODEL_DIR)'
  if code in (errno.EACCES, errno.EPERM, errno.EROFS):
    return 'Make MODEL_DIR writable (or set --gin.MODEL_DIR to a directory you can write)'
  if code in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOENT) or 'another run' in str(error):
    return ('Another run may be writing to this MODEL_DIR: stop it (one trainer per MODEL_DIR) '
            'or use another MODEL_DIR')
  return 'Fix the cause above'


def _cause(error: Exception) -> str:
  """The OS reason inside a TensorStore/Orbax error ('File too large', 'No space left on
  device'), else its first line."""
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  found = re.findall(r"([A-Za-z][A-Za-z ]+) \[os_error_code='(\d+)'\]", text)
  return f'{found[-1][0].strip()} (errno {found[-1][1]})' if found else text[:300]


def check_finite(tree: Any) -> None:
  """ValueError naming the first leaf of `tree` with a NaN or Inf, read shard by shard on the host.

  Not on the devices: a reduction over a sharded array is a small program with an all-reduce, and
  such eager collectives between train steps deadlocked XLA:CPU's simulated devices (threads of
  two groups each waiting at a rendezvous). Single-process only: in a multi-process job one
  process's verdict would send it down another path than the others (the train step's own check
  holds there)."""
  if jax.process_count() > 1:
    return
  for key, value in _flat(tree).items():
    if not jnp.issubdtype(value.dtype, jnp.inexact):
      continue
    shards = ([s.data for s in value.addressable_shards] if isinstance(value, jax.Array)
              else [value])
    if not all(np.isfinite(np.asarray(s)).all() for s in shards):
      raise ValueError(f'non-finite values in {key}')


def _saved_tree(state_dir: epath.Path) -> Any:
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(state_dir)
  tree = getattr(getattr(metadata, 'item_metadata', None), 'tree', None)
  if tree is None:
    raise FileNotFoundError(f'{state_dir} has no readable array metadata')
  return tree


def _check_matches(saved_tree: Any, abstract: Any, what: str, fix: str) -> None:
  """UsageError unless the saved tree has `abstract`'s names and shapes."""
  saved = {k: tuple(getattr(v, 'shape', ()) or ()) for k, v in _flat(saved_tree).items()}
  want = {k: tuple(v.shape) for k, v in _flat(abstract).items()}
  missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
  params_first = lambda k: (not k.startswith('params/'), k)  # the clearest name of a model change
  differ = sorted((k for k in set(want) & set(saved) if want[k] != saved[k]), key=params_first)
  if missing or extra or differ:
    detail = (f'{differ[0]} has shape {saved[differ[0]]} there, {want[differ[0]]} here' if differ
              else f'it lacks {missing[:2]}' if missing else f'it has extra {extra[:2]}')
    kind = 'model or optimizer' if 'opt_state' in str(missing + extra + differ) else 'model'
    unrolled = [any(re.search(r'/layers/\d+/', k) for k in keys) for keys in (saved, want)]
    if unrolled[0] != unrolled[1]:  # the same model in the other layer layout
      fix = ('It holds ' + ('unrolled' if unrolled[0] else 'scanned') + ' layers: add '
             f'--gin.t5x_lite.models.T5Config.scan_layers={not unrolled[0]} to read it.')
    raise UsageError(f'{what} was written by a different {kind} ({detail}). {fix}')


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (narrower types widened, 8-byte ones split in two)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _shard_sums(x: jax.Array) -> jax.Array:
  """Two uint32 sums of one shard's words, plain and hashed (x·φ then an xor-shift): any
  single flipped bit changes the first; the second catches damage that cancels in the first."""
  words = _as_uint32(x).ravel()
  mixed = words * jnp.uint32(0x9E3779B1)
  mixed = mixed ^ (mixed >> 15)
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(mixed, dtype=jnp.uint32)])


def checksums(tree: Any) -> dict[str, list[int]]:
  """Per array, two 32-bit sums over its elements, computed on the devices that hold it, shard by
  shard (one replica of each), and added on the host: independent of the sharding, so a state
  restored onto another mesh is checked against the same numbers. Per-shard programs need no
  collectives (see check_finite). Single-process: another process's shards are not here."""
  pending = {}
  with jax.set_mesh(None):  # each program runs on its shard's one device, not the run's mesh
    for key, value in _flat(tree).items():
      shards = ([s.data for s in value.addressable_shards if s.replica_id == 0]
                if isinstance(value, jax.Array) else [jnp.asarray(value)])
      pending[key] = [_shard_sums(shard) for shard in shards]
  return {key: [int(v) % 2**32 for v in np.sum(np.asarray(jax.device_get(sums), np.uint64), 0)]
          for key, sums in pending.items()}


def check_checksums(state: Any, saved: dict | None) -> None:
  """ValueError naming the first array whose bytes differ from what was saved (damage on disk
  that still decodes: a flipped bit in the array data); nothing to check for a step saved without
  checksums or in a multi-process job."""
  if not saved or jax.process_count() > 1:
    return
  now = checksums(state)
  for key, sums in saved.items():
    if now.get(key) != sums:
      raise ValueError(f'{key} does not match the checksum saved with it (damaged on disk)')


def _flat(tree: Any) -> dict[str, Any]:
  return {_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings: what Orbax restores onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def on_one_device(abstract: Any, device: jax.Device | None = None) -> Any:
  """`abstract` placed whole on one device (the first by default): single-device evaluation and
  inference restore straight into device memory instead of through a host copy of the model."""
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  return abstract_with_shardings(abstract, jax.tree.map(lambda _: sharding, abstract))


def step_dirs(path: str) -> list[epath.Path]:
  """The step directories `path` names, newest first: the step dir itself (holding `state/`), or
  every step of a checkpoints dir or of a MODEL_DIR (its `checkpoints/`)."""
  p = epath.Path(path)
  if (p / 'state').is_dir():
    return [p]
  for root in (p / 'checkpoints', p):
    steps = sorted((int(d.name) for d in root.iterdir()
                    if d.name.isdigit() and (d / 'state').is_dir()),
                   reverse=True) if root.is_dir() else []
    if steps:
      return [root / str(s) for s in steps]
  raise FileNotFoundError(
      f'no checkpoint at {path}: expected a step directory (with state/), a checkpoints/ '
      'directory of steps, or a MODEL_DIR holding one.')


def load_params(path: str, abstract_params: Any) -> tuple[Any, epath.Path]:
  """(params, the step directory they came from) of the train state checkpointed at `path`: what
  fine-tuning, evaluation, inference and conversion start from.

  A directory of steps falls back as training's resume does: a step that does not load or holds
  non-finite params is reported and the next older one tried (nothing is moved: readers leave the
  directory as it is). Leaves of `abstract_params` with a sharding come back as arrays placed on
  it, others as numpy. The checkpoint's names and shapes must match exactly (Orbax's partial
  restore would silently leave a missing param as a placeholder): ValueError otherwise, and when
  no step loads.
  """
  candidates = step_dirs(path)
  failed = []
  _quiet_abandoned_reads()
  for step_dir in candidates:
    try:
      return _load_step_params(step_dir, abstract_params), step_dir
    except UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      cause = _read_failure(e)
      if len(candidates) == 1:
        raise ValueError(f'checkpoint {step_dir} cannot be read ({cause}).') from e
      print(f'WARNING: checkpoint {step_dir} could not be read ({cause}); trying an older one',
            flush=True)
      failed.append(f'step {step_dir.name}: {cause}')
  raise ValueError(f'no checkpoint in {candidates[0].parent} could be read ({"; ".join(failed)}).')


def _load_step_params(step_dir: epath.Path, abstract_params: Any) -> Any:
  state_dir = storage.absolute(step_dir / 'state')
  saved_tree = _saved_tree(state_dir)
  if 'params' not in saved_tree:
    raise ValueError(f'{state_dir} holds no params (keys: {sorted(saved_tree)}).')
  _check_matches(saved_tree['params'], abstract_params, str(step_dir),
                 'Check that the model gin file describes the model that wrote it.')
  with ocp.PyTreeCheckpointer() as ckptr:
    target = {'params': abstract_params}
    restore_args = jax.tree.map(
        lambda x: (ocp.ArrayRestoreArgs(sharding=x.sharding) if getattr(x, 'sharding', None)
                   else ocp.RestoreArgs(restore_type=np.ndarray)), target)
    restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  check_finite(restored)
  return restored['params']


def _key(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
