"""Pretraining tasks: every T5-study objective on the bundled Wikipedia sample (offline), the
larger offline English corpus (``offline_english``, 54 MB, for scaling sweeps) and C4.

Task names are ``wiki_<objective>``, ``english_<objective>`` and ``c4_<objective>`` for the
objectives in `OBJECTIVES` (Raffel et al. 2020, Table 3; see `t5x_lite.data.objectives`), except
span corruption, which keeps T5's names ``wiki_span_corruption`` and ``c4_v220_span_corruption``
(and ``english_span_corruption``). ``<corpus>_objectives_mix`` samples the encoder-decoder
objectives at `MIX_RATES`. When gin sets TEXT_FILES, ``text_<objective>`` (``text_span_corruption``
too) and ``text_objectives_mix`` read your own files (t5x_lite/data/text_files.py).

Both follow T5's ``c4_v220_span_corruption`` recipe (Raffel et al. 2020, §3.1.4; t5.data.tasks):
rekey text → targets, tokenize, [cache point], span corruption (15% noise, mean span 3), append EOS
after trimming; inputs are optional features and there are no metrics. They differ only in the TFDS
dataset they read, so both go through `seqio.TfdsDataSource`.

C4 version: T5 registers ``c4/en:3.0.1``; the TFDS code installed here builds ``c4/en:3.1.0``
(3.1.0 only changes which duplicate URL is kept and escapes bad-word regexes), so 3.1.0 is the
default and ``register_all.c4_tfds_name = 'c4/en:3.0.1'`` reads an existing 3.0.1 copy.

`register_all` runs at import with defaults and is gin-configurable; the trainer calls it again
after parsing gin so the tasks pick up the configured vocabulary and data dirs.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from t5x_lite import gin_utils, paths, vocab
from t5x_lite.data import corpus, english_corpus, objectives, text_files

WIKI_TASK = 'wiki_span_corruption'
ENGLISH_TASK = 'english_span_corruption'
C4_TASK = 'c4_v220_span_corruption'
# Objective name -> seqio preprocessor (tokens in 'targets' -> inputs/targets without EOS).
OBJECTIVES = {
    'span_corruption': objectives.span_corruption,
    'prefix_lm': objectives.prefix_lm,
    'bert_style': objectives.bert_style,
    'deshuffling': objectives.deshuffling,
    'iid_mask': objectives.iid_mask_tokens,
    'iid_replace_spans': objectives.iid_replace_spans,
    'iid_drop': objectives.iid_drop_tokens,
    'full_lm': objectives.full_lm,
}
# Mixture rates of the encoder-decoder objectives (full_lm has no inputs, so it is left out):
# equal, except that T5's chosen objective gets as much as the rest together.
MIX_RATES = {'span_corruption': 6.0, 'prefix_lm': 1.0, 'bert_style': 1.0, 'deshuffling': 1.0,
             'iid_mask': 1.0, 'iid_replace_spans': 1.0, 'iid_drop': 1.0}
WIKI_MIXTURE = 'wiki_objectives_mix'
TEXT_MIXTURE = 'text_objectives_mix'
ENGLISH_MIXTURE = 'english_objectives_mix'
C4_MIXTURE = 'c4_objectives_mix'
WIKI_TFDS_NAME = 'wiki_sample:1.0.0'
ENGLISH_TFDS_NAME = f'{english_corpus.NAME}:{english_corpus.OfflineEnglish.VERSION}'
C4_TFDS_NAME = 'c4/en:3.1.0'
SPLITS = ('train', 'validation')


class PreparedTfdsDataSource(seqio.TfdsDataSource):
  """A TfdsDataSource that runs `ensure_data()` before anything reads the dataset.

  `ensure_data` either makes the data (the bundled corpus) or raises an error that says how to get
  it (C4), instead of the download attempt or stack trace TFDS would give. It runs once per source.
  """

  def __init__(self, tfds_name: str, tfds_data_dir: str, ensure_data: Callable[[], None],
               splits: Sequence[str] | Mapping[str, str] = SPLITS):
    # read_only: never let TFDS try to download or generate on read; `ensure_data` owns that.
    # `splits` may map task split names to TFDS ones (MNLI's validation_matched, say).
    super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits,
                     read_only=True)
    self._ensure_data = ensure_data
    self._data_ready = False

  def _ensure(self) -> None:
    if not self._data_ready:
      self._ensure_data()
      self._data_ready = True

  def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
    self._ensure()
    return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)

  def num_input_examples(self, split: str) -> Optional[int]:
    self._ensure()
    return super().num_input_examples(split)

  def list_shards(self, split: str):
    self._ensure()
    return super().list_shards(split)


def _require_c4(tfds_name: str, data_dir: str) -> None:
  """Raises a how-to error unless a prepared copy of `tfds_name` is in `data_dir`."""
  name, _, version = tfds_name.partition(':')
  info = os.path.join(data_dir, *name.split('/'), version, 'dataset_info.json')
  if not tf.io.gfile.exists(info):
    raise FileNotFoundError(
        f'Task {C4_TASK!r} reads TFDS {tfds_name} from {data_dir}, but it is not prepared there '
        f'(no {info}). Either prepare it: `tfds build {name} --data_dir={data_dir}` (Apache Beam '
        'job over Common Crawl, terabytes of downloads; see the TFDS c4 page for the manual '
        'steps), or point at an existing copy with T5X_LITE_DATA_DIR=<dir containing '
        'tensorflow_datasets/> or gin `register_all.c4_data_dir`. Offline, use the task '
        f'{WIKI_TASK!r}.')


def _output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  # As T5's DEFAULT_OUTPUT_FEATURES: span corruption makes inputs, so they are not required.
  return {'inputs': seqio.Feature(vocabulary, add_eos=True, required=False),
          'targets': seqio.Feature(vocabulary, add_eos=True)}


def task_name(corpus_name: str, objective: str) -> str:
  """``<corpus>_<objective>``; span corruption keeps T5's names."""
  if objective not in OBJECTIVES:
    raise ValueError(f'unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}.')
  if objective == 'span_corruption':
    return {'wiki': WIKI_TASK, 'english': ENGLISH_TASK, 'c4': C4_TASK}.get(
        corpus_name, f'{corpus_name}_span_corruption')
  return f'{corpus_name}_{objective}'


def preprocessors(objective: str) -> list:
  """T5's recipe: text -> targets, tokenize, [cache point], objective, append EOS after trim."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={'inputs': None, 'targets': 'text'}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      OBJECTIVES[objective],
      seqio.preprocessors.append_eos_after_trim,
  ]


def _add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
              objective: str = 'span_corruption') -> None:
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors(objective),
                         output_features=_output_features(vocabulary), metric_fns=[])


def _add_mixture(name: str, corpus_name: str, rates) -> None:
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task_name(corpus_name, objective), rate)
                                   for objective, rate in rates.items()])


@gin.configurable
def register_all(vocabulary: seqio.Vocabulary | None = None,
                 wiki_data_dir: str | None = None,
                 c4_data_dir: str | None = None,
                 c4_tfds_name: str = C4_TFDS_NAME,
                 mix_rates: Optional[dict] = None) -> None:
  """(Re)registers the pretraining tasks; cheap and offline (nothing is read until used).

  Args:
    vocabulary: defaults to the gin-configured `t5x_lite.vocab.get_vocabulary()`.
    wiki_data_dir, c4_data_dir: TFDS data dirs; default `t5x_lite.paths.tfds_data_dir()`
      (the offline English corpus is prepared beside the Wikipedia sample).
    c4_tfds_name: TFDS name and version of C4 (see the module docstring).
    mix_rates: objective -> rate for the ``*_objectives_mix`` mixtures; default `MIX_RATES`.
  """
  vocabulary = vocab.get_vocabulary() if vocabulary is None else vocabulary
  wiki_data_dir = str(wiki_data_dir or paths.tfds_data_dir())
  c4_data_dir = str(c4_data_dir or paths.tfds_data_dir())
  wiki_source = PreparedTfdsDataSource(WIKI_TFDS_NAME, wiki_data_dir,
                                       functools.partial(corpus.prepare_corpus, wiki_data_dir))
  english_source = PreparedTfdsDataSource(
      ENGLISH_TFDS_NAME, wiki_data_dir, functools.partial(english_corpus.prepare, wiki_data_dir))
  c4_source = PreparedTfdsDataSource(c4_tfds_name, c4_data_dir,
                                     functools.partial(_require_c4, c4_tfds_name, c4_data_dir))
  for objective in OBJECTIVES:
    # One source object per corpus: its data check then runs once for all objectives.
    _add_task(task_name('wiki', objective), wiki_source, vocabulary, objective)
    _add_task(task_name('english', objective), english_source, vocabulary, objective)
    _add_task(task_name('c4', objective), c4_source, vocabulary, objective)
  rates = MIX_RATES if mix_rates is None else mix_rates
  unknown = set(rates) - set(OBJECTIVES)
  if unknown:
    raise ValueError(f'mix_rates names unknown objectives {sorted(unknown)}; '
                     f'choose from {sorted(OBJECTIVES)}.')
  _add_mixture(WIKI_MIXTURE, 'wiki', rates)
  _add_mixture(ENGLISH_MIXTURE, 'english', rates)
  _add_mixture(C4_MIXTURE, 'c4', rates)
  for name in [n for n in seqio.TaskRegistry.names() if n.startswith('text_')]:
    seqio.TaskRegistry.remove(name)  # a previous TEXT_FILES's tasks
  seqio.MixtureRegistry.remove(TEXT_MIXTURE)
  text = text_files.own_text()
  if text is not None:  # TEXT_FILES: prepared on first read (once per machine), like the others
    source = PreparedTfdsDataSource(f'{text.tfds_name}:{text_files.VERSION}', wiki_data_dir,
                                    functools.partial(text_files.prepare, text, wiki_data_dir))
    for objective in OBJECTIVES:
      _add_task(task_name('text', objective), source, vocabulary, objective)
    _add_mixture(TEXT_MIXTURE, 'text', rates)


def check_text_task(mixture_or_task_name: str) -> None:
  """TEXT_FILES and a `text_*` task go together: either alone would train on other data or on
  nothing, so a UsageError says what to add."""
  text, wants_text = text_files.own_text(), mixture_or_task_name.startswith('text_')
  if text is not None and not wants_text:
    raise gin_utils.UsageError(
        f'TEXT_FILES is set but the task is {mixture_or_task_name!r}, which does not read it; '
        "train on your text with --gin.MIXTURE_OR_TASK_NAME=\"'text_span_corruption'\" (or "
        f"text_<objective>: {', '.join(o for o in OBJECTIVES if o != 'span_corruption')}).")
  if wants_text and text is None:
    raise gin_utils.UsageError(
        f'{mixture_or_task_name!r} reads your own text, but TEXT_FILES is not set; add '
        "--gin.TEXT_FILES=\"'notes/*.txt'\" (a glob or a list; .txt, .jsonl or .tfrecord).")


register_all()
