"""The training input pipeline: a seqio task or mixture → this host's numpy batches.

One call makes the whole chain that T5X builds in `utils.get_dataset`: the task's preprocessors,
the encoder-decoder feature converter (packing by default), this host's data shards, batching and
prefetch.

The data is split into `num_data_shards` disjoint seqio shards (`ShardInfo`), and each global batch
is made of one equal block of rows from every shard, in shard order. A host reads only the shards
whose blocks land on its devices, so the global batches depend on the seed and `num_data_shards`
alone, not on how many hosts read them: 1 process and 4 processes train on the same examples, and a
checkpoint can resume on another process count without skipping or repeating data.

Everything random is seeded, so two calls with the same arguments give the same batches. The
position within the data is the state of each shard's tf.data iterator (shuffle buffers, packing
carry-over, prefetched batches included): `DataIterator.save`/`restore` write and read it per shard,
so a resumed run continues exactly where the checkpointed one was, on any process count, without
re-reading what came before. ``start_batch=k`` (replay k batches and drop them) is the fallback for
checkpoints that hold no iterator state.
"""

from __future__ import annotations

import difflib
import os
from typing import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import gin_utils

Batch = dict[str, np.ndarray]

# The seqio converter whose output each model family's `logits_for_batch` reads.
FEATURE_CONVERTERS = {
    'encoder_decoder': seqio.EncDecFeatureConverter,
    'decoder_only': seqio.DecoderFeatureConverter,
    'prefix_lm': seqio.PrefixLMFeatureConverter,
}


def feature_converter(config, pack: bool = True) -> seqio.FeatureConverter:
  """The converter for `config.architecture` (a `t5x_lite.models.T5Config`)."""
  return FEATURE_CONVERTERS[config.architecture](pack=pack)


def get_dataset(mixture_or_task_name: str,
                task_feature_lengths: Mapping[str, int],
                batch_size: int,
                *,
                split: str = 'train',
                shuffle: bool = True,
                seed: int = 0,
                num_data_shards: int = 1,
                data_shards: Sequence[int] | None = None,
                pack: bool = True,
                start_batch: int = 0,
                num_epochs: int | None = None,
                feature_converter: seqio.FeatureConverter | None = None) -> 'DataIterator':
  """Iterates over this host's share of each global batch, as numpy arrays.

  Args:
    mixture_or_task_name: a registered seqio task or mixture (`t5x_lite.tasks.register_all()` registers ours).
    task_feature_lengths: e.g. ``{'inputs': 512, 'targets': 114}`` (T5's span corruption).
    batch_size: the GLOBAL batch size: `num_data_shards` blocks of batch_size/num_data_shards rows.
    split, shuffle, seed: which data and in which (seeded) order; all hosts pass the same seed.
    num_data_shards: how many disjoint shards the data is split into.
    data_shards: the shards this host reads (default: all); it gets their blocks concatenated in
      the order given, i.e. its contiguous rows of each global batch.
    pack: pack several examples into one sequence (``*_segment_ids``/``*_positions`` features).
    start_batch: batches to skip, to resume a run at that step.
    num_epochs: None repeats forever (training); 1 for one pass (evaluation).
    feature_converter: the model's converter (`feature_converter(config)`); by default the
      encoder-decoder one with `pack`.

  Returns:
    A `DataIterator` (checkpointable) of dicts with ``encoder_input_tokens``, ``decoder_target_tokens``,
    ``decoder_input_tokens``, ``decoder_loss_weights`` (+ segment ids and positions if packed),
    each of shape [len(data_shards) * batch_size // num_data_shards, length].
  """
  task = get_task(mixture_or_task_name)
  converter = feature_converter or seqio.EncDecFeatureConverter(pack=pack)
  data_shards = range(num_data_shards) if data_shards is None else list(data_shards)
  block = _check_sharding(batch_size, num_data_shards, data_shards)
  _check_lengths(mixture_or_task_name, task, task_feature_lengths, converter)
  if split not in task.splits:
    raise ValueError(
        f'{mixture_or_task_name!r} has no split {split!r}; it has {list(task.splits)}.')
  if start_batch < 0:
    raise ValueError(f'start_batch must be >= 0, got {start_batch}.')
  shards = []
  for index in data_shards:
    try:
      shards.append(seqio.get_dataset(
          task, dict(task_feature_lengths),
          feature_converter=converter,
          dataset_split=split, shuffle=shuffle, num_epochs=num_epochs,
          shard_info=seqio.ShardInfo(index=index, num_shards=num_data_shards),
          seed=seed, batch_size=block, use_cached=False, verbose=False))
    except gin_utils.UsageError:
      raise  # already names its cause and fix (e.g. a damaged corpus)
    except ValueError as e:
      raise ValueError(f'{mixture_or_task_name!r} with task_feature_lengths '
                       f'{dict(task_feature_lengths)}: {e}') from e
  return DataIterator({index: shard.skip(start_batch).prefetch(tf.data.AUTOTUNE)
                       for index, shard in zip(data_shards, shards)}, num_data_shards)


class DataIterator(Iterator[Batch]):
  """This host's shards as one iterator of numpy batches, whose position can be checkpointed.

  Each shard keeps its own tf.data iterator, saved under its own name
  (``shard-00003-of-00008``), so a checkpoint written by hosts reading some shards restores on
  hosts reading others.
  """

  def __init__(self, shards: Mapping[int, tf.data.Dataset], num_data_shards: int):
    self.num_data_shards = num_data_shards
    self._iterators = {index: iter(ds) for index, ds in shards.items()}

  def __next__(self) -> Batch:
    blocks = [next(it) for it in self._iterators.values()]
    if len(blocks) == 1:
      return {k: v.numpy() for k, v in blocks[0].items()}
    return {k: np.concatenate([b[k].numpy() for b in blocks]) for k in blocks[0]}

  def skip(self, num_batches: int) -> None:
    """Reads and drops `num_batches` (the replay fallback for a position without saved state)."""
    for it in self._iterators.values():
      for _ in range(num_batches):
        next(it)

  def _prefix(self, directory: str, index: int) -> str:
    return os.path.join(directory, f'shard-{index:05d}-of-{self.num_data_shards:05d}')

  def save(self, directory: str) -> None:
    """Writes the position of each of this host's shards into `directory`."""
    for index, it in self._iterators.items():
      try:
        tf.train.Checkpoint(iterator=it).write(self._prefix(directory, index))
      except tf.errors.OpError as e:  # e.g. a full disk: report it as the OSError it is
        reason = e.message.rsplit(';', 1)[-1].split('[Op:')[0].strip()
        raise OSError(f'{reason} (writing the input position)') from e

  def restore(self, directory: str) -> None:
    """Moves each shard to the position saved in `directory`; ValueError if one is missing."""
    for index, it in self._iterators.items():
      prefix = self._prefix(directory, index)
      if not tf.io.gfile.exists(prefix + '.index'):
        raise ValueError(f'no saved input position for data shard {index} of '
                         f'{self.num_data_shards} in {directory}')
      tf.train.Checkpoint(iterator=it).read(prefix).assert_consumed()


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture `name`, or a ValueError naming near misses."""
  names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in names:
    close = difflib.get_close_matches(name, names, n=3)
    raise ValueError(
        f'No seqio task or mixture named {name!r}.'
        + (f' Did you mean {close}?' if close else '')
        + f' Registered: {names or "none"}. Ours register with `from t5x_lite import tasks; '
        'tasks.register_all()`; yours when the module that defines them is imported (e.g. '
        'via --gin.import).')
  return seqio.get_mixture_or_task(name)


def _check_sharding(batch_size: int, num_data_shards: int, data_shards: Sequence[int]) -> int:
  """The rows per shard block, after checking the shard arguments."""
  if num_data_shards < 1:
    raise ValueError(f'num_data_shards must be >= 1, got {num_data_shards}.')
  bad = [i for i in data_shards if not 0 <= i < num_data_shards]
  if bad or not data_shards:
    raise ValueError(f'data_shards must be a non-empty list of indices in [0, {num_data_shards}); '
                     f'got {list(data_shards)}.')
  if batch_size < 1 or batch_size % num_data_shards:
    raise ValueError(
        f'The global batch_size {batch_size} must be a positive multiple of the number of data '
        f'shards {num_data_shards}: each global batch takes batch_size / num_data_shards rows from '
        f'every shard. Use e.g. batch_size='
        f'{max(num_data_shards, batch_size - batch_size % num_data_shards)}.')
  return batch_size // num_data_shards


def _check_lengths(name: str, task, lengths: Mapping[str, int],
                   converter: seqio.FeatureConverter) -> None:
  """Every length is a positive int for a feature the task has; the converter's features are set."""
  features = task.output_features
  unknown = set(lengths) - set(features)
  if unknown:
    raise ValueError(f'task_feature_lengths has {sorted(unknown)}, which {name!r} does not '
                     f'output; its features are {sorted(features)}.')
  needed = set(converter.TASK_FEATURES)
  missing = needed - set(lengths)
  if missing:
    raise ValueError(f'task_feature_lengths needs {sorted(missing)} for '
                     f'{type(converter).__name__} (the model\'s feature converter), e.g. '
                     f"{ {k: 512 for k in sorted(needed)} }.")
  bad = {k: v for k, v in lengths.items() if not isinstance(v, (int, np.integer)) or v < 1}
  if bad:
    raise ValueError(f'task_feature_lengths must be positive ints; got {bad}.')
