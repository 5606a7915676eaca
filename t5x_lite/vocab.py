"""SentencePiece vocabularies with T5's conventions; the default one is trained on the bundled corpus.

T5's vocabulary is a unigram SentencePiece model with pad=0, eos=1, unk=2 and no bos, plus 100
sentinel ids (``<extra_id_0>`` is the last id) added by seqio; 32000 pieces + 100 extras = 32100 ≤
the model's 32128 embedding rows (Raffel et al. 2020, §2.2, and the T5 checkpoints). We keep those ids
so that span corruption, the feature converters and decoding never special-case our vocabulary.

The bundled corpus (~2.5 MB of training prose) supports at most ~29k unigram pieces, so the default
vocabulary has `DEFAULT_VOCAB_SIZE` = 28000 pieces; training it takes a few seconds and happens once
per machine, on first use, under `paths.vocab_dir()`. Bring your own model with
``get_vocabulary.spm_path = '/path/to/spm.model'`` in gin.

Command line: ``python -m t5x_lite.vocab --input=a.txt --input=b.txt --model_prefix=out/spm
--vocab_size=32000`` (also installed as ``t5x-vocab``).
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('vocab'))

import hashlib
import io
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import gin
import seqio
import sentencepiece as spm
import tensorflow as tf
from absl import logging
from sentencepiece import sentencepiece_model_pb2

from t5x_lite import cli, gin_utils, paths, storage
from t5x_lite.data import corpus, text_files

T5_VOCAB_SIZE = 32000       # T5's SentencePiece model (cc_all.32000).
DEFAULT_VOCAB_SIZE = 28000  # Largest round size the bundled corpus supports (its cap is ~29.1k).
EXTRA_IDS = 100             # T5's sentinels <extra_id_0> ... <extra_id_99>.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_sentencepiece(input_files: Sequence[str | os.PathLike],
                        model_prefix: str | os.PathLike,
                        vocab_size: int = T5_VOCAB_SIZE,
                        *,
                        character_coverage: float = 0.9999,
                        num_threads: int = 1,
                        max_sentence_length: int = 1 << 16) -> str:
  """Trains a unigram SentencePiece model with T5's special ids; returns ``<model_prefix>.model``.

  One sentence (or paragraph) per input line. Byte fallback spells any character outside the pieces
  as UTF-8 bytes instead of <unk>; nmt_nfkc is T5's normaliser. Training is deterministic for a
  given `num_threads` (the EM sums depend on how the work is split), and the written bytes do not
  depend on file names, so the same text gives the same model on every machine. Also writes
  ``<model_prefix>.vocab`` (piece <tab> log-probability) for reading.
  """
  input_files = [str(f) for f in input_files]
  missing = [f for f in input_files if not os.path.isfile(f)]  # the trainer reads local files
  if not input_files or missing:
    raise FileNotFoundError(
        f'SentencePiece training input missing: {missing or "no --input given"}.')
  model = _train_model_proto(
      input=input_files, vocab_size=vocab_size, model_type='unigram',
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      byte_fallback=True, character_coverage=character_coverage,
      normalization_rule_name='nmt_nfkc', num_threads=num_threads,
      max_sentence_length=max_sentence_length, minloglevel=1)
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  # The trainer records its input and output paths; drop them so the bytes depend on content only.
  proto.trainer_spec.ClearField('input')
  proto.trainer_spec.ClearField('model_prefix')
  model = proto.SerializeToString(deterministic=True)
  prefix = str(model_prefix)
  tf.io.gfile.makedirs(os.path.dirname(prefix) or '.')
  storage.write_atomically(prefix + '.vocab',
                    ''.join(f'{p.piece}\t{p.score:g}\n' for p in proto.pieces).encode('utf-8'))
  storage.write_atomically(prefix + '.model', model)
  return prefix + '.model'


def _train_model_proto(**kwargs) -> bytes:
  """Runs the trainer in memory, turning its size error into advice."""
  out = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(model_writer=out, **kwargs)
  except RuntimeError as e:
    if 'Vocabulary size too high' in str(e):
      raise ValueError(f'{e}. The training text is too small for vocab_size='
                       f'{kwargs["vocab_size"]}: add text or lower vocab_size.') from e
    needed = re.search(r'smaller than required_chars\. (\d+) vs (\d+)', str(e))
    if needed:  # the text's characters plus 256 byte-fallback pieces and the special ids
      raise ValueError(f'vocab_size={needed.group(1)} is below the {needed.group(2)} pieces this '
                       'text needs for its characters and the 256 byte pieces; raise it.') from e
    raise
  return out.getvalue()


# ---------------------------------------------------------------------------- default vocabulary


def _corpora() -> dict:
  """Offline corpus name -> (its TFDS builder version, (split) -> (id, text) iterator)."""
  from t5x_lite.data import english_corpus  # pylint: disable=import-outside-toplevel
  return {'wiki_sample': (corpus.WikiSample.VERSION, corpus.iter_split),
          english_corpus.NAME: (english_corpus.OfflineEnglish.VERSION, english_corpus.iter_split)}


def default_spm_path(vocab_size: int = DEFAULT_VOCAB_SIZE, corpus_name: str = 'wiki_sample'
                     ) -> Path:
  """Where the model of `corpus_name` (an offline corpus) lives once trained (it may not exist
  yet)."""
  version = _corpora()[corpus_name][0]
  return paths.vocab_dir() / f'{corpus_name}-{version}_unigram_{vocab_size}.model'


def ensure_default_spm(vocab_size: int = DEFAULT_VOCAB_SIZE,
                       corpus_name: str = 'wiki_sample') -> str:
  """Trains a model on an offline corpus's train split (by default the bundled one) unless it is
  already cached.

  The text comes straight from the corpus generator (the same text TFDS stores), not from TFDS,
  because the first use is often inside a tf.data graph being traced, where eager reads fail.
  Safe under concurrent first use (file lock; the losers wait, then find the model).
  """
  return _ensure_spm(default_spm_path(vocab_size, corpus_name),
                     lambda: (text for _, text in _corpora()[corpus_name][1]('train')), vocab_size)


def _ensure_spm(path: Path, texts: Callable[[], Iterable[str]], vocab_size: int) -> str:
  """The model at `path`, trained on `texts()` (one document each) unless cached and intact."""
  if path.is_file() and _cache_problem(path) is None:
    return str(path)
  with paths.file_lock(path.with_suffix('.lock')):
    if path.is_file():
      problem = _cache_problem(path)
      if problem is None:
        return str(path)
      print(f'The cached vocabulary {path} is damaged ({problem}); training it again.', flush=True)
      path.unlink()
    start = time.time()
    text_path = path.with_suffix(f'.train{os.getpid()}.txt')
    try:
      with open(text_path, 'w', encoding='utf-8') as f:
        for text in texts():
          f.write(text + '\n')
      train_sentencepiece([text_path], path.with_suffix(''), vocab_size)
    finally:
      text_path.unlink(missing_ok=True)
    _record_checksum(path)
    logging.info('Trained the vocabulary %s in %.1f s.', path, time.time() - start)
  return str(path)


def _checksum_path(path: Path) -> Path:
  return path.with_name(path.name + '.sha256')


def _record_checksum(path: Path) -> None:
  """Written aside and renamed: a concurrent reader never sees half a checksum."""
  tmp = path.with_name(f'{path.name}.sha256.{os.getpid()}')
  tmp.write_text(hashlib.sha256(path.read_bytes()).hexdigest() + '\n')
  tmp.replace(_checksum_path(path))


def _cache_problem(path: Path) -> str | None:
  """What is wrong with a cached model (a cut copy, a flipped byte, garbage), or None. A model
  cached before checksums were kept gets one once it parses."""
  data = path.read_bytes()
  recorded = _checksum_path(path)
  if recorded.is_file():
    if recorded.read_text().strip() != hashlib.sha256(data).hexdigest():
      return 'it does not match the checksum recorded when it was trained'
    return None
  try:
    if not data or spm.SentencePieceProcessor(model_proto=data).get_piece_size() == 0:
      return 'it is empty'
  except RuntimeError:
    return 'it is not a SentencePiece model'
  _record_checksum(path)
  return None


def corpus_tokens(spm_path: str, corpus_name: str = 'wiki_sample', split: str = 'train') -> int:
  """Pieces in a split of an offline corpus under a SentencePiece model: how much text a sweep
  can read before it repeats. Counted once per model, then read from a file beside it."""
  import json  # pylint: disable=import-outside-toplevel
  cache = Path(f'{spm_path}.{corpus_name}.{split}.tokens.json')
  if cache.is_file():
    return int(json.loads(cache.read_text())['tokens'])
  processor = spm.SentencePieceProcessor(model_file=str(spm_path))
  tokens = 0
  for _, text in _corpora()[corpus_name][1](split):
    tokens += len(processor.encode(text))
  cache.write_text(json.dumps({'tokens': tokens, 'corpus': corpus_name, 'split': split}))
  return tokens


class DefaultSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """The default vocabulary, trained on first use rather than when a task is registered.

  Registering tasks at import must stay cheap, so the model file is only made when seqio first
  loads it (all loading goes through `_model_context`).
  """

  def __init__(self, vocab_size: int = DEFAULT_VOCAB_SIZE, extra_ids: int = EXTRA_IDS):
    self._default_vocab_size = vocab_size
    super().__init__(str(default_spm_path(vocab_size)), extra_ids=extra_ids)

  def _model_context(self):
    if self._model is None:
      ensure_default_spm(self._default_vocab_size)
    return super()._model_context()


def own_text_spm(text: text_files.OwnText) -> str:
  """A model of `text.vocab_size` pieces trained on the training split of the user's text, cached
  beside its prepared copy (the same text and size train once per machine)."""
  path = Path(paths.tfds_data_dir()) / text.tfds_name / f'unigram_{text.vocab_size}.model'
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    return _ensure_spm(path, lambda: (doc for _, doc in text_files.iter_split(text, 'train')),
                       text.vocab_size)
  except ValueError as e:
    raise gin_utils.UsageError(f'TEXT_VOCAB_SIZE={text.vocab_size}: {e}') from e


@gin.configurable
def get_vocabulary(spm_path: str | None = None,
                   extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The vocabulary for tasks and decoding: `spm_path` if given, else one trained on the user's
  text when TEXT_VOCAB_SIZE asks (t5x_lite.data.text_files), else the default one.

  gin: ``get_vocabulary.spm_path = '/path/to/spm.model'`` (any SentencePiece model that uses T5's
  ids: pad 0, eos 1, unk 2).
  """
  text = text_files.own_text()
  if text is not None and text.vocab_size:
    if spm_path is not None:
      raise gin_utils.UsageError(f'both get_vocabulary.spm_path ({spm_path}) and TEXT_VOCAB_SIZE '
                                 f'({text.vocab_size}) choose the vocabulary; drop one.')
    spm_path = own_text_spm(text)
  if spm_path is None:
    return DefaultSentencePieceVocabulary(extra_ids=extra_ids)
  fix = ('Train one with `python -m t5x_lite.vocab --input=text.txt --model_prefix=out/spm`, or '
         'leave get_vocabulary.spm_path unset to use the default vocabulary of the bundled corpus.')
  if not tf.io.gfile.exists(spm_path):
    raise gin_utils.MissingFileError(
        f'SentencePiece model {spm_path!r} does not exist (gin: get_vocabulary.spm_path). {fix}')
  _check_t5_model(spm_path, fix)
  return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)


def _check_t5_model(spm_path: str, fix: str) -> None:
  """The file is a SentencePiece model with T5's special ids, or a UsageError says what it is.

  seqio would load it lazily, failing inside tf.data or, with other ids, training on a wrong EOS.
  """
  try:
    with tf.io.gfile.GFile(spm_path, 'rb') as f:
      proto = f.read()
  except (OSError, tf.errors.OpError) as e:
    raise gin_utils.UsageError(
        f'SentencePiece model {spm_path!r} cannot be read ({type(e).__name__}: '
        f'{getattr(e, "strerror", None) or e}); check the path and its permissions.') from e
  try:
    model = spm.SentencePieceProcessor(model_proto=proto)
  except RuntimeError as e:  # sentencepiece's parse error
    raise gin_utils.UsageError(f'{spm_path!r} is not a SentencePiece model (gin: '
                               f'get_vocabulary.spm_path). {fix}') from e
  ids = (model.pad_id(), model.eos_id(), model.unk_id())
  if model.get_piece_size() < 3 or ids != (PAD_ID, EOS_ID, UNK_ID):
    raise gin_utils.UsageError(
        f'SentencePiece model {spm_path!r} has {model.get_piece_size()} pieces with pad, eos, unk '
        f'ids {ids}; T5 models need {(PAD_ID, EOS_ID, UNK_ID)}. {fix}')


def default_vocabulary() -> seqio.SentencePieceVocabulary:
  """The bundled-corpus vocabulary with T5's 100 sentinels, whatever gin says."""
  return DefaultSentencePieceVocabulary()


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
  """`t5x-vocab` (flags: t5x_lite.cli); bad input prints `error: ...` on one line and exits 2."""
  def run(rest):
    args = cli.parser('vocab').parse_args(rest)
    pieces = args.vocab_size or T5_VOCAB_SIZE
    start = time.time()
    try:
      path = train_sentencepiece(args.input, args.model_prefix, pieces,
                                 character_coverage=args.character_coverage,
                                 num_threads=args.num_threads)
    except (ValueError, FileNotFoundError) as e:
      raise gin_utils.UsageError(str(e)) from e
    print(f'Wrote {path} ({pieces} pieces) in {time.time() - start:.1f} s.')

  return gin_utils.run_cli(run, argv)

