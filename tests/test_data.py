"""t5x_lite.data.corpus: the markup cleaner, and the bundled corpus as the TFDS dataset."""

import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from t5x_lite import paths
from t5x_lite.data import corpus

MARKUP = ('{{', '}}', '[[', ']]', '<ref', '{|', "'''", '<!--')


# ------------------------------------------------------------------------------------- cleaner


def test_cleaner_keeps_prose_and_drops_apparatus():
  wikitext = '\n'.join([
      '{{Infobox person|name=Ada|birth={{birth date|1815|12|10}}}}',
      "'''Ada Lovelace''' was an [[England|English]] [[mathematician]]."
      '<ref name="a">{{cite book|t=x}}</ref> <!-- hidden -->',
      '[[File:Ada.jpg|thumb|Ada, painted by [[Margaret Carpenter]] [1836]]]',
      '== Early life ==',
      'She was born in [[London]]<ref>Source.</ref> &ndash; see [http://example.org the site] '
      '[http://bare.org].',
      '{| class="wikitable"',
      '| cell || {{flag|UK}}',
      '|}',
      '* A <b>listed</b> fact<br/>: x < y > z.',
      '== References ==',
      '{{reflist}}',
      '[[Category:Mathematicians]]',
  ])
  assert corpus.clean_wikitext(wikitext) == (
      'Ada Lovelace was an English mathematician.\n'
      'Early life\n'
      'She was born in London – see the site.\n'
      'A listed fact: x < y > z.')


def test_split_is_a_stable_function_of_the_title():
  assert corpus.split_of('Anarchism') == corpus.split_of('Anarchism')
  splits = [corpus.split_of(f'page {i}') for i in range(2000)]
  assert 0.05 < splits.count('validation') / len(splits) < 0.11


def test_missing_gensim_sample_names_path_and_fix(monkeypatch):
  monkeypatch.setattr(corpus, 'GENSIM_SAMPLE', 'test/test_data/no-such-dump.xml.bz2')
  with pytest.raises(FileNotFoundError, match=r'no-such-dump.*pip install -e \.'):
    corpus.gensim_sample_path()


# ---------------------------------------------------------------------------------- TFDS corpus


@pytest.fixture(scope='module')
def prepared():
  return corpus.prepare_corpus()   # shared per machine: the default cache dir


def test_both_splits_load_through_tfds_with_clean_text(prepared):
  assert prepared.info.version == '1.0.0' and prepared.info.supervised_keys is None
  for split in ('train', 'validation'):
    ds = tfds.load('wiki_sample:1.0.0', split=split, data_dir=paths.tfds_data_dir())
    examples = list(ds.as_numpy_iterator())
    assert examples, split
    for ex in examples:
      text = ex['text'].decode('utf-8')
      assert len(text) >= corpus.MIN_CHARS
      assert not [m for m in MARKUP if m in text], ex['title']
      assert corpus.split_of(ex['title'].decode('utf-8')) == split
  n = prepared.info.splits
  assert n['train'].num_examples > 10 * n['validation'].num_examples > 0


def test_tfds_splits_hold_exactly_the_generator_text(prepared):
  """The default vocabulary trains on `iter_split('train')`; it must be what the task reads."""
  for split in ('train', 'validation'):
    stored = {ex['title'].decode(): ex['text'].decode()
              for ex in prepared.as_dataset(split=split).as_numpy_iterator()}
    assert stored == dict(corpus.iter_split(split))


def test_concurrent_first_preparation_builds_once(tmp_path):
  """Two processes preparing into one empty dir both succeed (xdist workers, hosts)."""
  script = ('import sys; from t5x_lite.data import corpus; '
            'b = corpus.prepare_corpus(sys.argv[1]); print(b.info.splits["train"].num_examples)')
  procs = [subprocess.Popen([sys.executable, '-c', script, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert outputs[0][0].split()[-1] == outputs[1][0].split()[-1]
  assert tfds.builder('wiki_sample', data_dir=str(tmp_path)).is_prepared()
  assert not list((tmp_path / 'wiki_sample').glob('*incomplete*'))
