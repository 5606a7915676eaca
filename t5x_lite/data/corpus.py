"""The bundled offline corpus: a Wikipedia sample exposed as the TFDS dataset ``wiki_sample``.

Training machines may have no internet, so the default pretraining corpus is the English Wikipedia
sample that ships inside the ``gensim`` package (106 articles and 100 redirects of the 2016 enwiki
dump, CC BY-SA), read at run time from the installed package: after cleaning, 104 articles and
~2.8 MB of prose (97 train, 7 validation). Turning it into a TFDS dataset lets the default task
and C4 go through the same ``seqio.TfdsDataSource`` code path. Importing this module registers the
builder with TFDS, which is how ``tfds.builder('wiki_sample')`` finds it.

The markup cleaner is deliberately small: it keeps running prose and drops the apparatus (templates,
tables, references, files, categories) rather than rendering it, the way text corpora such as C4
keep natural-language lines only.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import html
import io
import importlib.util
import json
import re
import time
import zlib
from pathlib import Path
from typing import Iterator
from xml.etree import ElementTree

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from google.protobuf import json_format
from tensorflow_datasets.core.utils import tqdm_utils

from t5x_lite import gin_utils, paths

GENSIM_SAMPLE = ('test/test_data/'
                 'enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2')
MIN_CHARS = 500           # Pages shorter than this after cleaning are stubs or lists; skipped.
VALIDATION_PERCENT = 8    # Share of pages (by a stable hash of the title) held out for validation.

# Sections after which an article is references and link lists, not prose.
_TRAILING_SECTIONS = frozenset({'references', 'external links', 'see also', 'further reading',
                                'notes', 'bibliography', 'sources', 'footnotes', 'citations'})
# Tags whose content is not prose (formulas, image galleries, charts) and goes with the tag.
_DROP_WITH_CONTENT = ('ref', 'math', 'gallery', 'timeline', 'imagemap', 'score', 'chem', 'hiero')
_DROPPED_LINK_NAMESPACES = ('file:', 'image:', 'category:', 'media:')


def _not_unprepared_variant_warning(record) -> bool:
  """TFDS warns `Variant folder X has no dataset_info.json` for a copy not yet prepared, which
  is every first use (and a cut one is checked by `check_prepared`)."""
  return not (record.msg == 'Variant folder %s has no %s')


logging.get_absl_logger().addFilter(_not_unprepared_variant_warning)


# --------------------------------------------------------------------------------------- source


def package_dir(module: str, pip_name: str, what: str,
                how: str = '`pip install -e .` (or `make install`) in the t5x_lite checkout: '
                           'setup.cfg installs it') -> Path:
  """The directory of an installed package that ships corpus text, found without importing it,
  or a MissingFileError saying how to install it."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise gin_utils.MissingFileError(
        f'{what} is read from the {pip_name} package, which is not installed. Run {how}.')
  return Path(list(spec.submodule_search_locations)[0])


def gensim_sample_path() -> Path:
  """The bz2 XML dump inside the installed gensim package (gensim itself is not imported)."""
  path = package_dir('gensim', 'gensim', 'The bundled corpus') / GENSIM_SAMPLE
  if not path.is_file():
    raise gin_utils.MissingFileError(
        f'The bundled Wikipedia sample is missing: {path} does not exist. Reinstall gensim with '
        '`pip install -e .` in the t5x_lite checkout (it pins gensim==4.4.0, whose test data holds '
        'the sample).')
  return path


def iter_raw_pages(path: str | Path) -> Iterator[tuple[str, int, bool, str]]:
  """Streams (title, namespace, is_redirect, wikitext) from a MediaWiki XML dump (bz2 or plain).

  A dump that cannot be read to the end (truncated, not bz2, not XML) is a UsageError naming it.
  """
  opener = bz2.open if str(path).endswith('.bz2') else open
  try:
    with opener(path, 'rb') as f:
      for _, elem in ElementTree.iterparse(f, events=('end',)):
        if _local_name(elem.tag) != 'page':
          continue
        fields = {_local_name(child.tag): child for child in elem}
        title = fields['title'].text or ''
        ns = int(fields['ns'].text) if 'ns' in fields else 0
        text_elem = next((c for c in elem.iter() if _local_name(c.tag) == 'text'), None)
        text = (text_elem.text or '') if text_elem is not None else ''
        yield title, ns, 'redirect' in fields, text
        elem.clear()   # Keeps memory flat on big dumps.
  except (OSError, EOFError, ElementTree.ParseError) as e:
    raise gin_utils.UsageError(
        f'the Wikipedia dump {path} cannot be read ({type(e).__name__}: {e}); if it is the bundled '
        'sample, reinstall gensim with `pip install --force-reinstall gensim==4.4.0`.') from e


def _local_name(tag: str) -> str:
  return tag.rsplit('}', 1)[-1]


def iter_articles(path: str | Path | None = None,
                  min_chars: int = MIN_CHARS) -> Iterator[tuple[str, str]]:
  """(title, clean text) of each main-namespace article, skipping redirects and short pages."""
  for title, ns, is_redirect, wikitext in iter_raw_pages(path or gensim_sample_path()):
    if ns != 0 or is_redirect or wikitext.lstrip().upper().startswith('#REDIRECT'):
      continue
    text = clean_wikitext(wikitext)
    if len(text) >= min_chars:
      yield title, text


def iter_split(split: str, path: str | Path | None = None) -> Iterator[tuple[str, str]]:
  """(title, clean text) of the articles in `split`, in dump order: the TFDS split's content."""
  for title, text in iter_articles(path):
    if split_of(title) == split:
      yield title, text


def split_of(title: str, validation_percent: int = VALIDATION_PERCENT) -> str:
  """'train' or 'validation', from a hash of the title that is stable across runs and machines."""
  return 'validation' if zlib.crc32(title.encode('utf-8')) % 100 < validation_percent else 'train'


# -------------------------------------------------------------------------------------- cleaner


def clean_wikitext(text: str) -> str:
  """Wiki markup → plain prose, paragraphs separated by one newline.

  Order matters: comments and non-prose tags first (they may hide braces), then the nested
  constructs innermost-first (templates, tables, links), then line-level markup.
  """
  text = re.sub(r'<!--.*?(-->|$)', '', text, flags=re.DOTALL)
  for tag in _DROP_WITH_CONTENT:
    text = re.sub(rf'<{tag}\b[^>]*/>', '', text, flags=re.IGNORECASE)
    text = re.sub(rf'<{tag}\b[^>]*>.*?</{tag}\s*>', '', text, flags=re.IGNORECASE | re.DOTALL)
  text = _remove_nested(text, r'\{\{(?:(?!\{\{|\}\}).)*\}\}')     # {{templates}}, innermost first
  text = _remove_nested(text, r'\{\|(?:(?!\{\||\|\}).)*\|\}')     # {| tables |}
  text = _replace_links(text)
  # [http://x label] → label; a bare [http://x] goes.
  text = re.sub(r'\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]', r'\1', text)
  text = re.sub(r'\[(?:https?:|ftp:)?//[^\s\]]*\]', '', text)
  text = re.sub(r"'{2,}", '', text)                                # ''emphasis'', '''bold'''
  text = re.sub(r'__[A-Z]+__', '', text)                           # __TOC__ and friends
  text = re.sub(r'</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>\n]*)?/?>', '', text)  # html tags, not "x < y"
  text = html.unescape(text)                                       # &nbsp; &ndash; ...
  return _clean_lines(text)


def _remove_nested(text: str, innermost: str) -> str:
  pattern = re.compile(innermost, re.DOTALL)
  while True:
    text, n = pattern.subn('', text)
    if not n:
      return text


def _replace_links(text: str) -> str:
  """[[a|b]] → b, [[a]] → a; [[File:…]], [[Category:…]] and interlanguage links go.

  Innermost first, so a link inside a file caption is resolved before the file link is dropped.
  """
  def replace(m: re.Match) -> str:
    target, _, label = m.group(1).partition('|')
    t = target.strip().lower()
    if t.startswith(_DROPPED_LINK_NAMESPACES) or (not label and re.match(r'[a-z-]{2,12}:', t)):
      return ''
    return (label.rsplit('|', 1)[-1] if label else target.split('#')[0] or target).strip()

  # File captions may span lines; the closing ]] is the last two of a run ("…[1836]]]").
  pattern = re.compile(r'\[\[((?:(?!\[\[|\]\](?!\])).)*)\]\](?!\])', re.DOTALL)
  while True:
    text, n = pattern.subn(replace, text)
    if not n:
      return text


def _clean_lines(text: str) -> str:
  kept = []
  for line in text.split('\n'):
    line = line.strip()
    heading = re.fullmatch(r'(=+)\s*(.*?)\s*\1', line)
    if heading:
      if heading.group(2).lower() in _TRAILING_SECTIONS:
        break
      line = heading.group(2)
    elif line.startswith(('|', '!', '{', '}')):  # debris of broken tables
      continue
    line = re.sub(r'^[*#:;]+\s*', '', line)         # list and indent markers
    line = re.sub(r'\(\s*[,;]?\s*\)', '', line)     # "()" and "( ; x)" left by removed templates
    line = re.sub(r'\(\s*[,;]\s*', '(', line)
    line = re.sub(r'[ \t\u00a0]+', ' ', line).strip()
    line = re.sub(r' ([.,;:])', r'\1', line)      # "word ," likewise
    if line and not re.fullmatch(r'\([^()]*\)', line):  # list rows reduced to "(UK)"
      kept.append(line)
  return '\n'.join(kept)


# ----------------------------------------------------------------------------------------- TFDS


class WikiSample(tfds.core.GeneratorBasedBuilder):
  """English Wikipedia sample bundled with gensim, cleaned to prose (TFDS name ``wiki_sample``)."""

  # Prepared copies (and the default vocabulary) are cached by version: bump it when the cleaner
  # or the split changes, or machines keep using the old text.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: gensim 4.4.0 enwiki sample, t5x_lite cleaner.'}
  # TFDS looks a builder's code up through `importlib_resources`; this builder downloads nothing,
  # so pointing at this file directly saves that look-up.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='English Wikipedia pages (2016 dump sample shipped with gensim), wiki markup '
                    'stripped to plain prose. License: CC BY-SA 3.0.',
        features=tfds.features.FeaturesDict({'title': tfds.features.Text(),
                                             'text': tfds.features.Text()}),
        supervised_keys=None,
        homepage='https://dumps.wikimedia.org/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the source is an installed file.
    source = gensim_sample_path()
    return {split: self._generate_examples(source, split) for split in ('train', 'validation')}

  def _generate_examples(self, source, split):
    for title, text in iter_split(split, source):
      yield title, {'title': title, 'text': text}


def prepare_corpus(data_dir: str | None = None, name: str = 'wiki_sample'
                   ) -> tfds.core.DatasetBuilder:
  """Prepares the offline corpus `name` (this module's ``wiki_sample``, or english_corpus.py's
  ``offline_english``) under `data_dir` once (default `paths.tfds_data_dir()`); returns it.

  Idempotent and safe to call from several processes at once: the first prepares under a file lock,
  the others wait and then read. When already prepared this is one stat and a builder construction.
  """
  data_dir = str(data_dir or paths.tfds_data_dir())
  builder = _builder(data_dir, name)
  if builder.is_prepared():
    check_prepared(builder)
    return builder
  with paths.file_lock(Path(data_dir) / f'.{name}.lock'):
    builder = _builder(data_dir, name)
    if not builder.is_prepared():
      start = time.time()
      print(f'Preparing the offline corpus {name} in {data_dir} (once per machine) ...',
            flush=True)
      # TFDS prints its own banners ("Downloading and preparing dataset Unknown size ...") to
      # stdout: the line above says it once, in our words.
      with no_progress_bars(), contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      record_checksums(_builder(data_dir, name))
      logging.info('Prepared %s in %s in %.1f s.', name, data_dir, time.time() - start)
  return _builder(data_dir, name)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
  """TFDS's nested progress bars (cursor escapes on stderr) would bury a one-line error."""
  was_shown = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(was_shown)


def _rebuild_advice(version_dir) -> str:
  return (f'delete it with `rm -r {version_dir}` and rerun: the corpus is rebuilt from installed '
          'packages (a minute or two). Nothing else is stored there.')


CHECKSUMS = 't5x_lite_sha256.json'  # in a prepared copy's version dir: {file name: sha256}


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(str(path), 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _split_files(builder: tfds.core.DatasetBuilder) -> list:
  return [p for split in builder.info.splits.values() for p in split.filepaths]


def record_checksums(builder: tfds.core.DatasetBuilder) -> None:
  """What each split file holds when prepared: TFRecord framing finds a cut file, not a flipped
  byte inside a record, which tf.data would only meet mid-training (or, for validation, after)."""
  digests = {Path(str(p)).name: _sha256(p) for p in _split_files(builder)}
  path = f'{builder.data_dir}/{CHECKSUMS}'
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    f.write(json.dumps(digests, indent=1))
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def _builder(data_dir: str, name: str = 'wiki_sample') -> tfds.core.DatasetBuilder:
  """`tfds.builder`, with an unreadable prepared copy's dataset_info.json said in one line."""
  version_dir = Path(data_dir) / name / str(tfds.builder_cls(name).VERSION)
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (json_format.ParseError, tf.errors.OpError, OSError, UnicodeDecodeError) as e:
    raise gin_utils.UsageError(
        f'prepared corpus file {version_dir / "dataset_info.json"} cannot be read '
        f'({type(e).__name__}); {_rebuild_advice(version_dir)}') from e


def check_prepared(builder: tfds.core.DatasetBuilder) -> None:
  """Every split file of a prepared copy is there, holds the records its dataset_info.json lists
  and matches the checksum recorded when it was prepared, or a UsageError names the file and how
  to rebuild.

  A copy cut short (a full disk, an interrupted copy), a lost file or a flipped byte would
  otherwise fail inside tf.data in the middle of training, or, for the validation split, after
  it. The checksums (one sequential read, ~0.07 s for offline_english's 53 MB) settle an intact
  copy; only a copy that fails them, or one prepared before they were kept, has its TFRecord
  framing walked record by record (~1.8 s there), which names a cut or lost file as such.
  """
  digests = _recorded_checksums(builder)
  damaged = None
  if digests is not None:
    damaged = next((p for p in _split_files(builder)
                    if digests.get(Path(str(p)).name) != _sha256_or_none(p)), None)
    if damaged is None:
      return
  for split in builder.info.splits.values():
    for path, num_records in zip(split.filepaths, split.shard_lengths):
      problem = _tfrecord_problem(str(path), num_records)
      if problem:
        raise gin_utils.UsageError(f'prepared corpus file {path} is {problem}; '
                                   f'{_rebuild_advice(builder.data_dir)}')
  if damaged is None:  # prepared before checksums were kept: the framing passed, keep them
    record_checksums(builder)
    return
  raise gin_utils.UsageError(
      f'prepared corpus file {damaged} does not match the checksum recorded when it was prepared '
      f'(damaged on disk); {_rebuild_advice(builder.data_dir)}')


def _recorded_checksums(builder: tfds.core.DatasetBuilder) -> dict | None:
  """The checksums written at preparation, None for a copy from before they were kept."""
  recorded = f'{builder.data_dir}/{CHECKSUMS}'
  if not tf.io.gfile.exists(recorded):
    return None
  try:
    with tf.io.gfile.GFile(recorded) as f:
      return json.loads(f.read())
  except (ValueError, tf.errors.OpError) as e:
    raise gin_utils.UsageError(f'prepared corpus file {recorded} cannot be read '
                               f'({type(e).__name__}); {_rebuild_advice(builder.data_dir)}') from e


def _sha256_or_none(path) -> str | None:
  try:
    return _sha256(path)
  except tf.errors.OpError:  # missing or unreadable: the framing walk says which
    return None


def _tfrecord_problem(path: str, num_records: int) -> str | None:
  """What is wrong with `path` as a TFRecord file of `num_records` records, or None.

  A record is framed as [uint64 length][uint32 crc][data][uint32 crc], so the records' lengths must
  add up to the file size exactly.
  """
  try:
    size = tf.io.gfile.stat(path).length
    offset = 0
    with tf.io.gfile.GFile(path, 'rb') as f:
      for _ in range(num_records):
        header = f.read(8)
        offset += 16 + int.from_bytes(header, 'little')
        if len(header) < 8 or offset > size:
          return f'truncated or corrupt ({size} bytes do not hold its {num_records} records)'
        f.seek(offset)
  except tf.errors.NotFoundError:
    return 'missing'
  except tf.errors.OpError as e:
    return f'unreadable ({type(e).__name__})'
  if offset != size:
    return f'corrupt ({size - offset} bytes more than its {num_records} records)'
  return None
