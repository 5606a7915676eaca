"""t5x_lite/data/english_corpus.py: each source read from its installed package, line-level
de-duplication, the stable split, and the tasks that read the corpus."""

import itertools
import zlib

import seqio

from t5x_lite.data import english_corpus


def test_a_bible_chapter_is_one_document_with_a_line_per_verse():
  chapters = english_corpus.iter_bible('web')
  doc_id, genesis_1 = next(chapters)
  verses = genesis_1.split('\n')
  assert doc_id == 'bible_web/1001' and len(verses) == 31  # Genesis 1 has 31 verses
  assert verses[0] == 'In the beginning God created the heavens and the earth.'
  assert next(chapters)[0] == 'bible_web/1002'
  assert sum(1 for _ in chapters) + 2 == 1189  # chapters in the Protestant canon


def test_rotherham_poetry_gets_its_spaces_back():
  text = '\n'.join(t for _, t in itertools.islice(english_corpus.iter_bible('roth'), 600))
  assert ',' in text and not any(c.isalpha() for c in text.split(',')[1][:1])


def test_dictionary_entries_keep_definitions_and_drop_webster_tags():
  entries = dict(itertools.islice(english_corpus.iter_gcide(), 3000))
  assert len(entries) == 3000
  some = '\n'.join(entries.values())
  assert '1913 Webster' not in some and '[PJC]' not in some
  word, text = next((w, t) for w, t in entries.items() if '(n.)' in t)
  assert text.startswith(word.split('/')[-1])


def test_wikipedia_openings_are_one_document_per_article():
  docs = list(english_corpus.iter_wiki_openings())
  assert len(docs) == 10033 and all(d.startswith('wiki_openings/') for d, _ in docs)
  assert len({d for d, _ in docs}) == len(docs)


def test_a_line_seen_before_is_dropped_and_a_document_left_short_goes_with_it():
  line = 'In the beginning, God created the heavens and the earth, and it was good.'
  docs = [('a', f'{line}\nA first line of its own, long enough to stay in the corpus.'),
          ('b', f'  {line.upper()}  \nshort'),                  # only a repeat and 5 characters
          ('c', f'{line}\n\nAnother line of its own, long enough to keep this document.')]
  got = dict(english_corpus.iter_documents(docs))
  assert list(got) == ['a', 'c']
  assert got['a'].split('\n')[0] == line
  assert got['c'] == 'Another line of its own, long enough to keep this document.'


def test_the_split_is_a_stable_hash_of_the_document_id():
  ids = [f'gcide/word{i}' for i in range(5000)]
  validation = [i for i in ids if english_corpus.split_of(i) == 'validation']
  assert validation == [i for i in ids if zlib.crc32(i.encode()) % 100 < 2]  # independent
  assert 0.01 < len(validation) / len(ids) < 0.03


def test_every_translation_of_a_bible_chapter_is_on_one_side():
  """Translations paraphrase each other: a held-out chapter with a translation in training would
  let validation loss reward memorising it."""
  chapters = range(1001, 67000, 7)
  sides = {c: {english_corpus.split_of(f'bible_{t}/{c}') for t in english_corpus.BIBLES}
           for c in chapters}
  assert all(len(s) == 1 for s in sides.values())
  held_out = [c for c, s in sides.items() if s == {'validation'}]
  assert held_out == [c for c in chapters if zlib.crc32(f'bible/{c}'.encode()) % 100 < 2]


def test_every_objective_has_an_english_task_and_a_mixture():
  from t5x_lite.tasks import pretraining  # pylint: disable=import-outside-toplevel  (registers them)
  names = set(seqio.TaskRegistry.names())
  assert {pretraining.task_name('english', o) for o in pretraining.OBJECTIVES} <= names
  assert 'english_span_corruption' in names
  source = seqio.get_mixture_or_task('english_span_corruption').source
  assert source.tfds_dataset.name.split(':')[0] == english_corpus.NAME
  assert {t.name for t in seqio.get_mixture_or_task(pretraining.ENGLISH_MIXTURE).tasks} == {
      pretraining.task_name('english', o) for o in pretraining.MIX_RATES}
