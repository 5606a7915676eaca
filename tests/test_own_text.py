"""Pretraining on your own files (t5x_lite/data/text_files.py): the formats read, the split, the
errors, and one run end to end on a file this test writes, with a vocabulary trained on it."""

from __future__ import annotations

import json
import random

import gin
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from micro import MICRO, TRAIN_FLAGS
from t5x_lite import gin_utils, train
from t5x_lite.data import text_files
from t5x_lite.tasks import pretraining

WORDS = ('the cat sat on a mat while dogs ran past old red barns and quiet birds sang near tall '
         'green trees every morning farmers walked slowly along narrow roads carrying fresh bread '
         'cheese apples honey milk toward busy markets where children played loud games under '
         'bright summer skies').split()


def _documents(n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [' '.join(rng.choice(WORDS) for _ in range(rng.randint(20, 50))) + '.' for _ in range(n)]


def _read(path) -> list[str]:
  return [d.strip() for d in text_files.iter_documents(str(path))]


def test_each_format_gives_its_documents(tmp_path):
  docs = ['first document,\nwith two lines', 'second one', 'third']
  (tmp_path / 'blocks.txt').write_text('\n\n'.join(docs) + '\n')
  assert _read(tmp_path / 'blocks.txt') == docs
  (tmp_path / 'lines.txt').write_text('a b c\nd e f\n')
  assert _read(tmp_path / 'lines.txt') == ['a b c', 'd e f']
  (tmp_path / 'rows.jsonl').write_text(''.join(json.dumps({'text': d, 'n': i}) + '\n'
                                               for i, d in enumerate(docs)))
  assert _read(tmp_path / 'rows.jsonl') == docs
  with tf.io.TFRecordWriter(str(tmp_path / 'rows.tfrecord')) as writer:
    for d in docs:
      feature = {'text': tf.train.Feature(bytes_list=tf.train.BytesList(value=[d.encode()]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
  assert _read(tmp_path / 'rows.tfrecord') == docs
  # A TFDS dataset's files: TFDS writes the same records, in its own (hashed) order.
  tfds.dataset_builders.store_as_tfds_dataset(
      name='user_corpus', version='1.0.0', data_dir=str(tmp_path / 'tfds'),
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
      split_datasets={'train': [(str(i), {'text': d}) for i, d in enumerate(docs)]})
  shards = tf.io.gfile.glob(str(tmp_path / 'tfds/user_corpus/1.0.0/*train.tfrecord*'))
  assert sorted(d for s in shards for d in _read(s)) == sorted(docs)


def test_the_split_follows_the_text_not_the_files(tmp_path):
  docs = _documents(300)
  (tmp_path / 'a.txt').write_text('\n'.join(docs[:150]))
  (tmp_path / 'b.txt').write_text('\n'.join(docs[150:]))
  (tmp_path / 'all.txt').write_text('\n'.join(reversed(docs)))
  two = text_files.own_text(str(tmp_path / '[ab].txt'))
  one = text_files.own_text(str(tmp_path / 'all.txt'))
  for split in ('train', 'validation'):
    assert (sorted(d for _, d in text_files.iter_split(two, split))
            == sorted(d for _, d in text_files.iter_split(one, split)))
  held_out = [d for _, d in text_files.iter_split(one, 'validation')]
  assert 0 < len(held_out) < 0.06 * len(docs)  # 2% expected: 6 of 300, binomial spread
  assert two.fingerprint != one.fingerprint  # other bytes, another prepared copy


def test_bad_files_are_one_line_usage_errors(tmp_path):
  with pytest.raises(gin_utils.UsageError, match=r"no file matches '.*nothing\*\.txt'"):
    text_files.own_text(str(tmp_path / 'nothing*.txt'))
  (tmp_path / 'empty.txt').write_text('\n \n')
  with pytest.raises(gin_utils.UsageError, match=r'empty\.txt holds no text'):
    text_files.prepare(text_files.own_text(str(tmp_path / 'empty.txt')), str(tmp_path / 'd'))
  (tmp_path / 'latin1.txt').write_bytes('caf\xe9\n'.encode('latin-1'))
  with pytest.raises(gin_utils.UsageError, match=r'not UTF-8 text \(byte 0xe9 at offset 3\)'):
    _read(tmp_path / 'latin1.txt')
  (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{"body": "no text field"}\n')
  with pytest.raises(gin_utils.UsageError, match=r'bad\.jsonl:2 has no string "text" field'):
    _read(tmp_path / 'bad.jsonl')
  with pytest.raises(gin_utils.UsageError, match='TEXT_FILES is not set'):
    text_files.own_text(None, vocab_size=8000)
  (tmp_path / 'folder.txt').mkdir()  # a directory where a file was meant: unreadable for any user
  with pytest.raises(gin_utils.UsageError, match=r'folder\.txt cannot be read'):
    _read(tmp_path / 'folder.txt')


def test_text_files_and_a_text_task_go_together(tmp_path):
  (tmp_path / 'a.txt').write_text('some text\nmore text\n')
  gin.bind_parameter('own_text.files', str(tmp_path / 'a.txt'))
  with pytest.raises(gin_utils.UsageError, match=r"task is 'wiki_span_corruption', which does not"):
    pretraining.check_text_task('wiki_span_corruption')
  pretraining.check_text_task('text_prefix_lm')
  gin.clear_config()
  with pytest.raises(gin_utils.UsageError, match=r"'text_prefix_lm' reads your own text, but"):
    pretraining.check_text_task('text_prefix_lm')


@pytest.mark.slow
def test_pretrain_on_your_own_text_with_its_own_vocabulary(tmp_path, monkeypatch, capsys):
  """The README's own-text command on a file written here: the text is prepared, a 320-piece
  vocabulary trained on its training split, the loss falls, a validation sample is decoded."""
  monkeypatch.setenv('T5X_LITE_DATA_DIR', str(tmp_path / 'data'))  # nothing cached beforehand
  docs = _documents(400)
  (tmp_path / 'notes.txt').write_text('\n\n'.join(docs) + '\n')
  code = train.main([*MICRO[:-TRAIN_FLAGS], f"--gin.TEXT_FILES='{tmp_path}/notes.txt'",
                     '--gin.TEXT_VOCAB_SIZE=320', '--gin.VOCAB_SIZE=512',
                     "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
                     f'--gin.MODEL_DIR={tmp_path}/run', '--gin.TRAIN_STEPS=40',
                     '--gin.train.log_period=5', '--gin.train.plot_loss=False'])
  out, err = capsys.readouterr()
  assert code == 0, err
  prepared = [line for line in out.splitlines() if line.startswith('Prepared ')]
  assert prepared and 'training and' in prepared[0], out
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert losses[-1] < losses[0] - 1.0, losses
  assert 'Training text_span_corruption' in out and 'prediction:' in out, out
  models = list((tmp_path / 'data').rglob('own_text_*/unigram_320.model'))
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  assert len(models) == 1 and spm.SentencePieceProcessor(model_file=str(models[0])).vocab_size() == 320
