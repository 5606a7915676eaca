"""t5x_lite.vocab: T5's special ids and sentinels, training, the CLI, and gin selection."""

import copy
import os
import shutil
import subprocess
import sys

import gin
import pytest
import seqio

from t5x_lite import vocab
from t5x_lite.data import corpus


@pytest.fixture(scope='module')
def default_vocab():
  # Shared across test files and runs: trained once per machine under the cache dir (file lock).
  v = vocab.default_vocabulary()
  v.load_model()
  return v


@pytest.fixture(scope='module')
def small_text(tmp_path_factory):
  """~60 KB of the bundled corpus, one paragraph per line: enough for a few hundred pieces."""
  path = tmp_path_factory.mktemp('text') / 'small.txt'
  articles = [text for _, text in corpus.iter_articles()][:3]
  path.write_text('\n'.join(articles)[:60_000], encoding='utf-8')
  return path


def test_default_vocabulary_has_t5_special_ids(default_vocab):
  assert (default_vocab.pad_id, default_vocab.eos_id, default_vocab.unk_id) == (0, 1, 2)
  assert default_vocab.tokenizer.bos_id() == -1
  assert default_vocab.tokenizer.id_to_piece(0) == '<pad>'
  assert default_vocab.tokenizer.id_to_piece(1) == '</s>'


def test_default_vocabulary_size_and_sentinels_are_at_the_end(default_vocab):
  assert default_vocab.vocab_size == vocab.DEFAULT_VOCAB_SIZE + vocab.EXTRA_IDS
  assert default_vocab.vocab_size <= 32128  # fits T5's embedding table
  assert default_vocab.encode('<extra_id_0>')[-1] == default_vocab.vocab_size - 1
  assert default_vocab.encode('<extra_id_99>')[-1] == default_vocab.vocab_size - 100


def test_round_trip_including_characters_outside_the_pieces(default_vocab):
  text = 'The aardvark is a nocturnal mammal native to Africa. Ångström naïve 🙂 ∮'
  ids = default_vocab.encode(text)
  assert default_vocab.unk_id not in ids  # byte fallback spells rare characters as bytes
  assert default_vocab.decode(ids) == text


def test_default_vocabulary_survives_gin_deepcopy(default_vocab):
  clone = copy.deepcopy(default_vocab)
  assert clone == default_vocab
  assert clone.encode('Hello world') == default_vocab.encode('Hello world')


def test_training_is_deterministic_and_independent_of_file_names(small_text, tmp_path):
  copied = tmp_path / 'elsewhere.txt'
  copied.write_bytes(small_text.read_bytes())
  a = vocab.train_sentencepiece([small_text], tmp_path / 'a' / 'spm', vocab_size=600)
  b = vocab.train_sentencepiece([copied], tmp_path / 'b' / 'other', vocab_size=600)
  assert open(a, 'rb').read() == open(b, 'rb').read()
  model = seqio.SentencePieceVocabulary(a, extra_ids=10)
  assert model.vocab_size == 610
  assert (model.pad_id, model.eos_id, model.unk_id) == (0, 1, 2)


def test_too_large_vocab_size_says_what_to_do(small_text, tmp_path):
  with pytest.raises(ValueError, match='lower vocab_size'):
    vocab.train_sentencepiece([small_text], tmp_path / 'spm', vocab_size=32000)


def test_command_line_writes_a_model(small_text, tmp_path):
  prefix = tmp_path / 'out' / 'spm'
  result = subprocess.run(
      [sys.executable, '-m', 't5x_lite.vocab', f'--input={small_text}', f'--input={small_text}',
       f'--model_prefix={prefix}', '--vocab_size=500'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  model = seqio.SentencePieceVocabulary(str(prefix) + '.model')
  assert model.vocab_size == 500
  assert (tmp_path / 'out' / 'spm.vocab').read_text(encoding='utf-8').startswith('<pad>\t')


def test_gin_selects_a_user_model(small_text, tmp_path):
  path = vocab.train_sentencepiece([small_text], tmp_path / 'spm', vocab_size=400)
  gin.parse_config(f"get_vocabulary.spm_path = '{path}'")
  try:
    v = vocab.get_vocabulary()
  finally:
    gin.clear_config()
  assert v.sentencepiece_model_file == path
  assert v.vocab_size == 400 + vocab.EXTRA_IDS


def test_missing_user_model_is_a_clear_error(tmp_path):
  missing = str(tmp_path / 'nope.model')
  with pytest.raises(FileNotFoundError, match='nope.model.*does not exist'):
    vocab.get_vocabulary(spm_path=missing)


@pytest.fixture(scope='module')
def small_cache(tmp_path_factory):
  """A cache dir holding a freshly trained 600-piece default-corpus vocabulary and its checksum."""
  root = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as m:
    m.setenv('T5X_LITE_DATA_DIR', str(root))
    vocab.ensure_default_spm(600)
  return root


@pytest.mark.parametrize('damage,checksum', [
    (lambda b: b[:len(b) // 2], False),                      # a cut copy, cached before checksums
    (lambda b: b'', False),                                  # an empty file
    (lambda b: b'\x00garbage' * 100, False),                 # not a model at all
    (lambda b: b[:1000] + bytes([b[1000] ^ 1]) + b[1001:], True),  # one flipped bit
])
def test_a_damaged_cached_vocabulary_is_trained_again(damage, checksum, small_cache, tmp_path,
                                                       monkeypatch, capsys):
  """Said in one line, then retrained to the same bytes (training is deterministic)."""
  shutil.copytree(small_cache, tmp_path / 'cache')
  monkeypatch.setenv('T5X_LITE_DATA_DIR', str(tmp_path / 'cache'))
  path = vocab.ensure_default_spm(600)
  good = open(path, 'rb').read()
  assert os.path.exists(path + '.sha256')
  if not checksum:
    os.remove(path + '.sha256')
  with open(path, 'wb') as f:
    f.write(damage(good))
  capsys.readouterr()
  assert vocab.ensure_default_spm(600) == path
  out = capsys.readouterr().out
  assert out.startswith(f'The cached vocabulary {path} is damaged (') and out.count('\n') == 1
  assert open(path, 'rb').read() == good
  assert vocab.ensure_default_spm(600) == path and not capsys.readouterr().out  # healed
