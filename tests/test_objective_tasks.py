"""The T5-study objectives as seqio tasks: registered names, examples, and their statistics.

Each objective runs through seqio with the default vocabulary on an in-memory corpus whose token
stream we chunk ourselves, so every example can be checked against the paper's definition
(Raffel et al. 2020, sec. 3.3 and Table 3) of what inputs and targets hold.
"""

import collections
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite import vocab
from t5x_lite.tasks import pretraining, show

LENGTHS = {'inputs': 128, 'targets': 128}
TABLE_3_SENTENCE = 'Thank you for inviting me to your party last week.'
WORDS = ('the model reads a long text and learns to fill in words that were hidden from it while '
         'the decoder writes them back one token at a time during pretraining on clean web '
         'pages').split()
NEW_OBJECTIVES = [o for o in pretraining.OBJECTIVES if o != 'span_corruption']


@pytest.fixture(scope='module')
def vocabulary():
  return vocab.get_vocabulary()


def _documents(num_docs=120, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, size=int(rng.integers(30, 120)))) + '.'
          for _ in range(num_docs)]


def _run(objective, vocabulary, docs, seed=0):
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({'text': docs}),
      splits=['train'])
  task = seqio.Task(f'test_{objective}', source=source,
                    preprocessors=pretraining.preprocessors(objective),
                    output_features={'inputs': seqio.Feature(vocabulary, required=False),
                                     'targets': seqio.Feature(vocabulary)}, metric_fns=[])
  ds = task.get_dataset(LENGTHS, split='train', use_cached=False, shuffle=False, seed=seed)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


@pytest.fixture(scope='module')
def stream(vocabulary):
  docs = _documents()
  return docs, [t for doc in docs for t in vocabulary.encode(doc)]


def _chunks(stream, n):
  return [stream[i:i + n] for i in range(0, len(stream), n)]


@pytest.fixture(scope='module')
def results(vocabulary, stream):
  docs, _ = stream
  return {o: _run(o, vocabulary, docs) for o in NEW_OBJECTIVES}


def _strip_eos(ids):
  assert ids[-1] == 1
  return ids[:-1]


def test_every_objective_is_registered_for_wiki_and_c4():
  names = set(seqio.TaskRegistry.names())
  for objective in pretraining.OBJECTIVES:
    assert {pretraining.task_name('wiki', objective), pretraining.task_name('c4', objective)} <= names
  assert {'wiki_prefix_lm', 'c4_prefix_lm', 'wiki_bert_style', 'wiki_deshuffling', 'wiki_iid_mask',
          'wiki_iid_replace_spans', 'wiki_iid_drop', 'wiki_full_lm'} <= names
  mix = seqio.get_mixture_or_task(pretraining.WIKI_MIXTURE)
  assert {t.name for t in mix.tasks} == {pretraining.task_name('wiki', o)
                                        for o in pretraining.MIX_RATES}
  assert mix.get_rate(seqio.get_mixture_or_task('wiki_prefix_lm')) == 1.0


def test_unknown_mixture_objective_is_rejected():
  with pytest.raises(ValueError, match='unknown objectives'):
    pretraining.register_all(mix_rates={'span_corruption': 1.0, 'bert': 1.0})
  pretraining.register_all()


@pytest.mark.parametrize('name', [f'wiki_{o}' for o in NEW_OBJECTIVES] + [pretraining.WIKI_MIXTURE])
def test_wiki_tasks_yield_examples_with_default_vocabulary(name):
  task = seqio.get_mixture_or_task(name)
  lengths = {'inputs': 128, 'targets': 114}   # the mixture has to fit span corruption too
  ds = task.get_dataset(lengths, split='validation', shuffle=False, seed=0)
  examples = list(ds.take(4).as_numpy_iterator())
  assert len(examples) == 4
  for ex in examples:
    assert ex['targets'][-1] == 1 and len(ex['targets']) <= lengths['targets']
    if name.endswith('full_lm'):
      assert 'inputs' not in ex
    else:
      assert ex['inputs'][-1] == 1 and len(ex['inputs']) <= lengths['inputs']


def test_prefix_lm_inputs_then_targets_are_the_chunk(results, stream):
  chunks = _chunks(stream[1], 128)          # min(inputs, targets): both fit with EOS
  examples = results['prefix_lm']
  assert len(examples) == len(chunks)
  for ex, chunk in zip(examples, chunks):
    inputs, targets = _strip_eos(ex['inputs']), _strip_eos(ex['targets'])
    assert inputs + targets == chunk and inputs and (targets or len(chunk) == 1)
  # Split point uniform over 1..127: mean prefix fraction about 1/2.
  full = [ex for ex, c in zip(examples, chunks) if len(c) == 128]
  assert abs(np.mean([len(ex['inputs']) - 1 for ex in full]) / 127 - 0.5) < 0.1


def test_full_text_objectives_keep_the_chunk_as_targets(results, stream):
  chunks = _chunks(stream[1], 127)
  for objective in ('bert_style', 'deshuffling', 'iid_mask', 'full_lm'):
    assert [_strip_eos(ex['targets']) for ex in results[objective]] == chunks, objective


def test_deshuffling_inputs_are_a_permutation(results):
  moved = []
  for ex in results['deshuffling']:
    inputs, targets = _strip_eos(ex['inputs']), _strip_eos(ex['targets'])
    assert sorted(inputs) == sorted(targets)
    moved.append(np.mean(np.array(inputs) != np.array(targets)))
  assert np.mean(moved) > 0.8


def _fractions(results, objective, sentinel):
  masked = changed = total = 0
  for ex in results[objective]:
    inputs, targets = np.array(_strip_eos(ex['inputs'])), np.array(_strip_eos(ex['targets']))
    masked += (inputs == sentinel).sum()
    changed += ((inputs != targets) & (inputs != sentinel)).sum()
    total += len(targets)
  return masked / total, changed / total, total


def _close(observed, p, n, num_se=5):
  return abs(observed - p) < num_se * math.sqrt(p * (1 - p) / n)


def test_iid_mask_realises_15_percent(results, vocabulary):
  masked, changed, n = _fractions(results, 'iid_mask', vocabulary.vocab_size - 1)
  assert changed == 0 and _close(masked, 0.15, n)


def test_bert_style_corrupts_15_percent_as_80_10_10(results, vocabulary):
  """Mask 0.15*0.8 = 12%; a random token 1.5% (less the ~0 chance it repeats the original)."""
  masked, changed, n = _fractions(results, 'bert_style', vocabulary.vocab_size - 1)
  assert _close(masked, 0.12, n) and _close(changed, 0.015, n)


def test_drop_tokens_splits_the_chunk_into_kept_and_dropped(results, stream):
  chunks = _chunks(stream[1], 127)         # inputs length - 1: inputs never trimmed
  dropped = 0
  for ex, chunk in zip(results['iid_drop'], chunks):
    inputs, targets = _strip_eos(ex['inputs']), _strip_eos(ex['targets'])
    assert collections.Counter(inputs) + collections.Counter(targets) == collections.Counter(chunk)
    assert len(inputs) + len(targets) == len(chunk)
    dropped += len(targets)
  assert _close(dropped / len(stream[1]), 0.15, len(stream[1]))


def _fill_sentinels(inputs, targets, sentinel_floor):
  """Replace each sentinel in the inputs by the tokens that follow it in the targets."""
  spans, current = {}, None
  for t in targets:
    if t >= sentinel_floor:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  return [x for t in inputs for x in (spans[t] if t >= sentinel_floor else [t])]


def test_replace_spans_reconstructs_the_chunk(results, stream, vocabulary):
  chunks = _chunks(stream[1], 127)
  floor = vocabulary.vocab_size - 100
  noise = 0
  for ex, chunk in zip(results['iid_replace_spans'], chunks):
    inputs, targets = _strip_eos(ex['inputs']), _strip_eos(ex['targets'])
    sentinels = [t for t in inputs if t >= floor]
    assert sentinels == [t for t in targets if t >= floor]
    assert sentinels == list(range(vocabulary.vocab_size - 1, vocabulary.vocab_size - 1 - len(sentinels), -1))
    assert _fill_sentinels(inputs, targets, floor) == chunk
    noise += len(targets) - len(sentinels)
  assert _close(noise / len(stream[1]), 0.15, len(stream[1]))


def test_objectives_are_deterministic_by_seed(vocabulary, stream, results):
  docs = stream[0][:10]
  for objective in ('bert_style', 'iid_replace_spans'):
    a, b, c = (_run(objective, vocabulary, docs, seed=s) for s in (3, 3, 4))
    assert a == b and a != c, objective


def test_show_command_prints_decoded_examples(capsys):
  """`python -m t5x_lite.tasks show wiki_iid_drop --text=...`: names, inputs and targets."""
  assert show.main(['show', 'wiki_iid_drop', '--noise_density=0.5', f'--text={TABLE_3_SENTENCE}']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == '== wiki_iid_drop'
  assert out[1].startswith('  [0] inputs') and out[2].startswith('  [0] targets')
  assert out[1].endswith('</s>') and out[2].endswith('</s>')
  assert show.main(['show', 'wiki_no_such_objective']) == 2
  assert "error: unknown task 'wiki_no_such_objective'" in capsys.readouterr().err


def test_table_3_sentence_through_every_objective():
  """The T5 paper's example sentence through each objective (what `show --all --text` prints)."""
  exs = {o: show.examples(pretraining.task_name('wiki', o), text=TABLE_3_SENTENCE, seed=1)[0]
         for o in pretraining.OBJECTIVES}
  out = '\n'.join(show.format_examples(pretraining.task_name('wiki', o), [exs[o]])
                  for o in pretraining.OBJECTIVES)
  # Span corruption of 12 tokens: 2 noise tokens in one span, which (as in T5) ends the text.
  assert 'inputs  (12 ids): Thank you for inviting me to your party last <extra_id_0> </s>' in out
  assert 'targets (4 ids): <extra_id_0> week. </s>' in out
  original = exs['full_lm']['targets'].tolist()
  assert len(original) == 13 and 'inputs' not in exs['full_lm']
  assert exs['prefix_lm']['inputs'].tolist()[:-1] + exs['prefix_lm']['targets'].tolist() == original
  for objective in ('bert_style', 'deshuffling', 'iid_mask'):
    assert exs[objective]['targets'].tolist() == original
    assert len(exs[objective]['inputs']) == 13
  assert sorted(exs['deshuffling']['inputs'].tolist()) == sorted(original)
  drop = exs['iid_drop']
  assert sorted(drop['inputs'].tolist()[:-1] + drop['targets'].tolist()[:-1]) == sorted(original[:-1])
