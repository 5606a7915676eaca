"""Fine-tuning tasks: offline ones (article opening → title, question type, review sentiment) and
GLUE/SuperGLUE.

``wiki_title``: inputs ``"title: "`` + the first `OPENING_WORDS` words of a ``wiki_sample`` article,
target its title (97 train / 7 validation examples). Most Wikipedia articles name their subject in
the first sentence, so a model can learn to copy it: the title occurs in the opening of 86% of the
training articles ignoring case (72% exactly). Metrics: accuracy, SQuAD exact match and token F1.

``trec_coarse`` and ``movie_sentiment`` (t5x_lite/data/labelled.py; offline, from an installed
package): ``"trec question: <question>"`` → its coarse answer type (``"human"``, 6 classes; 4,858
train / 523 validation; metrics accuracy and macro F1) and ``"sentiment review: <snippet>"`` →
``"positive"`` or ``"negative"`` (9,534 / 1,034; accuracy and F1 of "positive").

GLUE (``glue_<config>_v2``, TFDS ``glue/<config>:2.0.0``) and SuperGLUE
(``super_glue_<config>_v102``, TFDS ``super_glue/<config>:1.0.2``) in T5's text-to-text format
(Raffel et al. 2020, §2.4 and Appendix D): ``"<task> <feature>: <text> <feature>: <text>"`` with the
features in alphabetical order (WiC: sentence1, sentence2, word), e.g.
``"mnli hypothesis: … premise: …"``; the target is the label's TFDS ClassLabel name, STS-B's score
rounded to the nearest 0.2 (``"3.8"``). Metrics as T5: CoLA Matthews correlation, STS-B Pearson
and Spearman, MRPC and QQP F1 and accuracy, CB accuracy and macro F1, the rest accuracy. Each task
has splits ``train`` and ``validation`` (MNLI's is ``validation_matched``; its
``validation_mismatched`` is there too). Left out: MultiRC and ReCoRD (one example per answer
candidate, scored per question), WSC (needs T5's span-marking preprocessor), the test splits (no
labels) and the diagnostic sets AX/AX-b/AX-g (test only).

Mixtures ``glue_v2`` and ``super_glue_v102`` sample each task in proportion to its training
examples, capped at `MIXTURE_MAX_EXAMPLES` (examples-proportional mixing, Raffel et al. 2020,
§3.5.2); no GLUE or SuperGLUE task reaches the cap, so they are plainly proportional.

GLUE data is downloaded and prepared once with ``tfds build``; until then, using a GLUE task raises
an error that says how (registering the tasks reads nothing). `register_all` runs at import with
defaults and is gin-configurable as ``register_finetuning_tasks`` (``register_all`` alone would be
ambiguous with the pretraining tasks' function).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite import metrics, paths, vocab
from t5x_lite.data import corpus, labelled
from t5x_lite.tasks.pretraining import PreparedTfdsDataSource, WIKI_TFDS_NAME

WIKI_TITLE_TASK = 'wiki_title'
# Offline labelled tasks: name -> (TFDS dataset, input prefix, label names).
LABELLED_TASKS = {'trec_coarse': (labelled.TREC, 'trec question:',
                                  tuple(labelled.TREC_CLASSES.values())),
                  'movie_sentiment': (labelled.MOVIES, 'sentiment review:', labelled.SENTIMENTS)}
OPENING_WORDS = 64  # ~100 tokens: long enough to hold the subject's name, short for fine-tuning.
GLUE_VERSION, SUPER_GLUE_VERSION = '2.0.0', '1.0.2'
GLUE_CONFIGS = ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli')
SUPER_GLUE_CONFIGS = ('boolq', 'cb', 'copa', 'rte', 'wic')
GLUE_MIXTURE, SUPER_GLUE_MIXTURE = 'glue_v2', 'super_glue_v102'
MIXTURE_MAX_EXAMPLES = 2**19
TFDS_DATA_DIR_ENV = 'TFDS_DATA_DIR'
# T5 orders the text features alphabetically, except WiC's (its start/end indices are left out).
_FEATURE_ORDER = {('super_glue', 'wic'): ('sentence1', 'sentence2', 'word')}


# ------------------------------------------------------------------------------ preprocessors


@seqio.map_over_dataset
def wiki_title(x: Mapping[str, tf.Tensor], opening_words: int = OPENING_WORDS) -> dict:
  """``{'title', 'text'}`` → inputs ``"title: <first opening_words words>"``, targets the title."""
  opening = tf.strings.reduce_join(tf.strings.split(x['text'])[:opening_words], separator=' ')
  return {'inputs': tf.strings.join(['title:', opening], separator=' '), 'targets': x['title']}


@seqio.map_over_dataset
def labelled_text(x: Mapping[str, tf.Tensor], prefix: str) -> dict:
  """``{'text', 'label'}`` → inputs ``"<prefix> <text>"``, targets the label name."""
  return {'inputs': tf.strings.join([prefix, x['text']], separator=' '), 'targets': x['label']}


@seqio.map_over_dataset
def glue_text(x: Mapping[str, tf.Tensor], benchmark_name: str, feature_names: Sequence[str],
              label_names: Optional[Sequence[str]]) -> dict:
  """A GLUE-shaped record → T5's text pair: ``"<benchmark> <name>: <text> …"`` → label name.

  `label_names` None means a regression label (STS-B, 0..5), written rounded to the nearest 0.2
  with one decimal, which makes the score a short string the decoder can emit. Halfway cases go
  to the even fifth (tf.round, as T5): 2.5 → "2.4", 3.5 → "3.6".
  """
  parts = [benchmark_name]
  for name in feature_names:
    parts += [f'{name}:', x[name]]
  if label_names is None:
    targets = tf.strings.as_string(tf.round(x['label'] * 5) / 5, precision=1)
  else:
    targets = tf.gather(tf.constant(list(label_names)), x['label'])
  return {'inputs': tf.strings.join(parts, separator=' '), 'targets': targets}


def preprocessors(text_preprocessor: Callable) -> list:
  """T5's fine-tuning recipe: text pair, tokenize, [cache point], append EOS after trimming."""
  return [text_preprocessor, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


# ------------------------------------------------------------------------ GLUE / SuperGLUE specs


def task_name(benchmark: str, config: str) -> str:
  """``glue_<config>_v2`` / ``super_glue_<config>_v102``, T5's names for these TFDS versions."""
  if benchmark == 'glue' and config in GLUE_CONFIGS:
    return f'glue_{config}_v2'
  if benchmark == 'super_glue' and config in SUPER_GLUE_CONFIGS:
    return f'super_glue_{config}_v102'
  raise ValueError(f'no fine-tuning task for {benchmark}/{config}; GLUE: {GLUE_CONFIGS}, '
                   f'SuperGLUE: {SUPER_GLUE_CONFIGS}.')


def tfds_name(benchmark: str, config: str) -> str:
  return f'{benchmark}/{config}:{GLUE_VERSION if benchmark == "glue" else SUPER_GLUE_VERSION}'


def _builder_config(benchmark: str, config: str):
  """TFDS's own config (label names, text features); reading it needs the code, not the data."""
  return tfds.builder_cls(benchmark).builder_configs[config]


def feature_names(benchmark: str, config: str) -> tuple[str, ...]:
  if (benchmark, config) in _FEATURE_ORDER:
    return _FEATURE_ORDER[(benchmark, config)]
  cfg = _builder_config(benchmark, config)
  return tuple(sorted(cfg.text_features if benchmark == 'glue' else cfg.features))


def label_names(benchmark: str, config: str) -> Optional[tuple[str, ...]]:
  """The ClassLabel names, in id order; None for STS-B's real-valued score."""
  classes = _builder_config(benchmark, config).label_classes
  return None if classes is None else tuple(classes)


def metric_fns(config: str, labels: Optional[Sequence[str]]) -> list[Callable]:
  """T5's metrics for the task (``t5.data.glue_utils``), on label strings; the offline tasks'
  as the GLUE task of their kind (two classes: F1 of the second label; more: macro F1)."""
  if config == 'movie_sentiment':
    return [metrics.accuracy, functools.partial(metrics.binary_f1, positive_label=labels[1],
                                                negative_label=labels[0])]
  if config == 'trec_coarse':
    return [metrics.accuracy, functools.partial(metrics.macro_f1, labels=labels)]
  if config == 'cola':
    return [metrics.matthews_corrcoef]
  if config == 'stsb':
    return [metrics.pearson_corrcoef, metrics.spearman_corrcoef]
  if config in ('mrpc', 'qqp'):   # labels are (not_x, x): the positive class is the second
    return [functools.partial(metrics.binary_f1, positive_label=labels[1],
                              negative_label=labels[0]), metrics.accuracy]
  if config == 'cb':
    return [metrics.accuracy, functools.partial(metrics.macro_f1, labels=labels)]
  return [metrics.accuracy]


def splits(config: str) -> dict[str, str]:
  """Task split → TFDS split; MNLI has no plain 'validation', so it means the matched one."""
  if config == 'mnli':
    return {'train': 'train', 'validation': 'validation_matched',
            'validation_matched': 'validation_matched',
            'validation_mismatched': 'validation_mismatched'}
  return {'train': 'train', 'validation': 'validation'}


def _require_prepared(name: str, data_dir: str, task: str) -> None:
  """Raises a how-to error unless TFDS `name` is prepared in `data_dir`."""
  if tfds.builder(name, data_dir=data_dir).is_prepared():
    return
  dataset = name.partition(':')[0]
  benchmark = dataset.partition('/')[0]
  raise FileNotFoundError(
      f'Task {task!r} reads TFDS {name} from {data_dir}, but it is not prepared there. Prepare it '
      f'once (downloads from the web): `tfds build {dataset} --data_dir={data_dir}` (name just '
      f'`{benchmark}` to prepare every {benchmark} task, as its mixture needs), or point at '
      f'an existing copy with {TFDS_DATA_DIR_ENV}=<dir> or gin '
      '`register_finetuning_tasks.glue_data_dir`. Offline, use the task '
      f'{WIKI_TITLE_TASK!r}.')


def default_glue_data_dir() -> str:
  """Where GLUE/SuperGLUE are looked for: ``$TFDS_DATA_DIR`` (TFDS's own variable), else ours."""
  return os.environ.get(TFDS_DATA_DIR_ENV) or paths.tfds_data_dir()


# -------------------------------------------------------------------------------- registration


def _output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {'inputs': seqio.Feature(vocabulary, add_eos=True),
          'targets': seqio.Feature(vocabulary, add_eos=True)}


def _add_task(name: str, source: seqio.DataSource, text_preprocessor: Callable,
              vocabulary: seqio.Vocabulary, task_metric_fns: list[Callable]) -> None:
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors(text_preprocessor),
                         output_features=_output_features(vocabulary), metric_fns=task_metric_fns)


def _add_benchmark(benchmark: str, configs: Sequence[str], data_dir: str,
                   vocabulary: seqio.Vocabulary) -> list[str]:
  names = []
  for config in configs:
    name, labels = task_name(benchmark, config), label_names(benchmark, config)
    source = PreparedTfdsDataSource(
        tfds_name(benchmark, config), data_dir,
        functools.partial(_require_prepared, tfds_name(benchmark, config), data_dir, name),
        splits=splits(config))
    text = functools.partial(glue_text, benchmark_name=config,
                             feature_names=feature_names(benchmark, config), label_names=labels)
    _add_task(name, source, text, vocabulary, metric_fns(config, labels))
    names.append(name)
  return names


def _add_mixture(name: str, task_names: Sequence[str], max_examples: Optional[int]) -> None:
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(task_names), default_rate=functools.partial(
      seqio.mixing_rate_num_examples, maximum=max_examples))


@gin.configurable('register_finetuning_tasks')
def register_all(vocabulary: seqio.Vocabulary | None = None,
                 wiki_data_dir: str | None = None,
                 glue_data_dir: str | None = None,
                 opening_words: int = OPENING_WORDS,
                 mixture_max_examples: Optional[int] = MIXTURE_MAX_EXAMPLES) -> None:
  """(Re)registers the fine-tuning tasks and mixtures; cheap and offline (nothing is read).

  Args:
    vocabulary: defaults to the gin-configured `t5x_lite.vocab.get_vocabulary()`.
    wiki_data_dir: TFDS data dir of the offline data (bundled corpus, trec_questions,
      movie_snippets); default `t5x_lite.paths.tfds_data_dir()`.
    glue_data_dir: TFDS data dir holding prepared glue/ and super_glue/; default
      `default_glue_data_dir()` (``$TFDS_DATA_DIR``, else ours).
    opening_words: how many words of the article ``wiki_title`` shows.
    mixture_max_examples: cap on a task's training examples when setting mixture rates.
  """
  vocabulary = vocab.get_vocabulary() if vocabulary is None else vocabulary
  if opening_words < 1:
    raise ValueError(f'opening_words must be at least 1, got {opening_words}.')
  wiki_data_dir = str(wiki_data_dir or paths.tfds_data_dir())
  data_dir = str(glue_data_dir or default_glue_data_dir())
  wiki_source = PreparedTfdsDataSource(WIKI_TFDS_NAME, wiki_data_dir,
                                       functools.partial(corpus.prepare_corpus, wiki_data_dir))
  _add_task(WIKI_TITLE_TASK, wiki_source,
            functools.partial(wiki_title, opening_words=opening_words), vocabulary,
            [metrics.accuracy, metrics.exact_match, metrics.token_f1])
  for name, (dataset, prefix, labels) in LABELLED_TASKS.items():
    versioned = f'{dataset}:{tfds.builder_cls(dataset).VERSION}'
    source = PreparedTfdsDataSource(
        versioned, wiki_data_dir, functools.partial(corpus.prepare_corpus, wiki_data_dir, dataset))
    _add_task(name, source, functools.partial(labelled_text, prefix=prefix), vocabulary,
              metric_fns(name, labels))
  _add_mixture(GLUE_MIXTURE, _add_benchmark('glue', GLUE_CONFIGS, data_dir, vocabulary),
               mixture_max_examples)
  _add_mixture(SUPER_GLUE_MIXTURE,
               _add_benchmark('super_glue', SUPER_GLUE_CONFIGS, data_dir, vocabulary),
               mixture_max_examples)


register_all()
