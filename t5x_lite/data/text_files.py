"""Your own text as a pretraining corpus: files -> documents -> a deterministic document-level
train/validation split, prepared once as a TFDS dataset that the `text_<objective>` tasks read
(tasks/pretraining.py), with its own SentencePiece vocabulary on request (t5x_lite/vocab.py).

gin (gin/runs/pretrain.gin binds both to macros):
    own_text.files = 'notes/*.txt'      # TEXT_FILES: a glob or a list of globs
    own_text.vocab_size = 8000          # TEXT_VOCAB_SIZE: > 0 trains a vocabulary on the text

Formats, by file name:
  *.jsonl, *.json          one JSON object per line; its "text" field is a document
  *.tfrecord*              tf.train.Example records with a bytes feature "text" (a prepared TFDS
                           dataset's files are such records: point at its *.tfrecord-* files)
  anything else            UTF-8 text: one document per blank-line-separated block when the file
                           has a blank line, else one document per line

A document goes to validation when a hash of its text says so (`VALIDATION_PERCENT`), so the split
does not depend on file order or names, and a repeated document never straddles it. The prepared
copy lives under the TFDS data dir, named by a hash of the files' bytes: the same text is prepared
once per machine, changed text is prepared anew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import time
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import gin
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite import gin_utils, paths
from t5x_lite.data import corpus

VALIDATION_PERCENT = 2  # of documents, by a hash of their text
FORMAT = 1              # bump when reading or splitting changes: prepared copies are named by it
VERSION = '1.0.0'
FIX = ('set TEXT_FILES (gin: own_text.files) to UTF-8 text, .jsonl with a "text" field or '
       'TFRecord files')


@dataclasses.dataclass(frozen=True)
class OwnText:
  """The user's text files (globs expanded, sorted) and the vocabulary size asked for (0: none)."""
  files: tuple[str, ...]
  vocab_size: int = 0

  @property
  def fingerprint(self) -> str:
    """A hash of the files' bytes in order (not their names) and of `FORMAT`. `own_text()` makes a
    new OwnText for the vocabulary and for the tasks: the bytes are read once per process, again
    only when a file's size or modification time changes."""
    stats = [tf.io.gfile.stat(p) for p in self.files]
    return _fingerprint(self.files, tuple((s.length, s.mtime_nsec) for s in stats))

  @property
  def tfds_name(self) -> str:
    return f'own_text_{self.fingerprint}'


@functools.lru_cache(maxsize=8)
def _fingerprint(files: tuple[str, ...], stamps: tuple) -> str:
  del stamps  # part of the cache key only
  digest = hashlib.sha256(f'format {FORMAT}\n'.encode())
  for path in files:
    with _opened(path, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 22), b''):
        digest.update(chunk)
    digest.update(b'\0end of file\0')
  return digest.hexdigest()[:16]


@gin.configurable
def own_text(files: str | Sequence[str] | None = None, vocab_size: int = 0) -> OwnText | None:
  """The configured text (None when TEXT_FILES is unset); a UsageError when no file matches."""
  if not files:
    if vocab_size:
      raise gin_utils.UsageError(f'TEXT_VOCAB_SIZE={vocab_size} trains a vocabulary on your text, '
                                 "but TEXT_FILES is not set; add --gin.TEXT_FILES=\"'notes/*.txt'\".")
    return None
  patterns = [files] if isinstance(files, str) else list(files)
  found = []
  for pattern in patterns:
    matches = sorted(tf.io.gfile.glob(os.path.expanduser(str(pattern))))
    if not matches:
      raise gin_utils.UsageError(f'TEXT_FILES: no file matches {pattern!r} (from '
                                 f'{os.getcwd()}); give existing files or a glob that matches.')
    found += [m for m in matches if not tf.io.gfile.isdir(m)]
  if not found:
    raise gin_utils.UsageError(f'TEXT_FILES {patterns} matches only directories; {FIX}.')
  gin_utils.check_int('TEXT_VOCAB_SIZE', vocab_size, minimum=0)
  return OwnText(tuple(dict.fromkeys(found)), int(vocab_size))


def split_of(text: str) -> str:
  """'validation' for `VALIDATION_PERCENT` of documents by a stable hash of the text, else
  'train'."""
  return ('validation' if zlib.crc32(text.encode('utf-8')) % 100 < VALIDATION_PERCENT
          else 'train')


@contextlib.contextmanager
def _opened(path: str, mode: str):
  """tf.io.gfile.GFile (local paths and buckets), an unreadable file said as a UsageError."""
  try:
    with tf.io.gfile.GFile(path, mode) as f:
      yield f
  except (OSError, tf.errors.OpError) as e:
    cause = getattr(e, 'strerror', None) or getattr(e, 'message', None) or str(e)
    raise gin_utils.UsageError(f'TEXT_FILES: {path} cannot be read ({cause}); check the path and '
                               'its permissions.') from e


def iter_documents(path: str) -> Iterator[str]:
  """The documents of one file (see the module docstring for the formats)."""
  name = os.path.basename(path)
  if '.tfrecord' in name:
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature.get('text')
        if feature is None:
          raise gin_utils.UsageError(f'TEXT_FILES: {path} holds a record without a "text" '
                                     f'feature; {FIX}.')
        yield from (v.decode('utf-8') for v in feature.bytes_list.value)
    except tf.errors.OpError as e:
      raise gin_utils.UsageError(f'TEXT_FILES: {path} is not a readable TFRecord file '
                                 f'({e.message}); {FIX}.') from e
    return
  with _opened(path, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise gin_utils.UsageError(
        f'TEXT_FILES: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); '
        'convert it (e.g. iconv -f latin1 -t utf-8).') from e
  if name.endswith(('.jsonl', '.json')):
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise gin_utils.UsageError(f'TEXT_FILES: {path}:{number} is not a JSON object ({e}); '
                                   'give one object per line with a "text" field.') from e
      if not isinstance(row, dict) or not isinstance(row.get('text'), str):
        raise gin_utils.UsageError(f'TEXT_FILES: {path}:{number} has no string "text" field; '
                                   'give one object per line with a "text" field.')
      yield row['text']
    return
  lines = text.strip().splitlines()
  if any(not line.strip() for line in lines):
    yield from re.split(r'\n\s*\n', text.strip())
  else:
    yield from lines


def iter_split(text: OwnText, split: str) -> Iterator[tuple[str, str]]:
  """(id, document) of one split, read from the files (no TFDS): what the prepared copy holds."""
  for path in text.files:
    for index, document in enumerate(iter_documents(path)):
      document = document.strip()
      if document and split_of(document) == split:
        yield f'{os.path.basename(path)}:{index}', document


def prepare(text: OwnText, data_dir: str | None = None) -> str:
  """Prepares `text` as a TFDS dataset once; returns its TFDS name with version.

  Safe under concurrent first use (a file lock; the others wait, then read). A split left empty by
  the hash (a handful of documents) takes one document from the other, the same one every time.
  """
  data_dir = str(data_dir or paths.tfds_data_dir())
  version_dir = Path(data_dir) / text.tfds_name / VERSION
  if not (version_dir / 'dataset_info.json').is_file():
    with paths.file_lock(Path(data_dir) / f'.{text.tfds_name}.lock'):
      if not (version_dir / 'dataset_info.json').is_file():
        _store(text, data_dir)
  corpus.check_prepared(tfds.builder(text.tfds_name, data_dir=data_dir))
  return f'{text.tfds_name}:{VERSION}'


def _store(text: OwnText, data_dir: str) -> None:
  start = time.time()
  size = sum(tf.io.gfile.stat(p).length for p in text.files)
  print(f'Preparing your text ({len(text.files)} file(s), {size / 1e6:.1f} MB) in '
        f'{data_dir}/{text.tfds_name} (once per machine) ...', flush=True)
  splits = {s: sorted(iter_split(text, s)) for s in ('train', 'validation')}
  if not splits['train'] and not splits['validation']:
    raise gin_utils.UsageError(f'TEXT_FILES: {", ".join(text.files)} '
                               f'{"holds" if len(text.files) == 1 else "hold"} no text; {FIX}.')
  for empty, other in (('validation', 'train'), ('train', 'validation')):
    if not splits[empty] and len(splits[other]) > 1:
      splits[empty].append(splits[other].pop(0))
  if not splits['train'] or not splits['validation']:
    raise gin_utils.UsageError(f'TEXT_FILES: {", ".join(text.files)} '
                               f'{"holds" if len(text.files) == 1 else "hold"} one document; give '
                               'at least two (one is held out for validation).')
  features = tfds.features.FeaturesDict({'text': tfds.features.Text(),
                                         'id': tfds.features.Text()})
  with corpus.no_progress_bars(), contextlib.redirect_stdout(io.StringIO()):
    tfds.dataset_builders.store_as_tfds_dataset(
        name=text.tfds_name, version=VERSION, features=features, data_dir=data_dir,
        split_datasets={s: [(doc_id, {'text': doc, 'id': doc_id}) for doc_id, doc in rows]
                        for s, rows in splits.items()},
        description=f'Documents of {", ".join(text.files)} (t5x_lite own text).')
  corpus.record_checksums(tfds.builder(text.tfds_name, data_dir=data_dir))
  print(f'Prepared {len(splits["train"]):,} training and {len(splits["validation"]):,} validation '
        f'documents in {time.time() - start:.1f} s.', flush=True)
