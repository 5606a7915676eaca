"""t5x_lite/curves.py: the loss curve PNG, from metrics.jsonl as the trainer writes it."""

import json
import struct

from t5x_lite import curves


def _png_size(path):
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('>II', data[16:24])


def test_reads_train_losses_skipping_eval_rows_and_a_cut_line(tmp_path):
  rows = [{'step': 1, 'loss': 9.5}, {'step': 2, 'loss': 8.25, 'accuracy': 0.1},
          {'step': 2, 'eval/wiki/accuracy': 3.0}, {'step': 3, 'loss': 7.0}]
  text = ''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 4, "lo'  # killed mid-write
  (tmp_path / 'metrics.jsonl').write_text(text)
  assert curves.read_losses(str(tmp_path)) == ([1, 2, 3], [9.5, 8.25, 7.0])
  path = curves.plot_loss(str(tmp_path))
  assert path == str(tmp_path / 'loss.png')
  assert _png_size(tmp_path / 'loss.png') == (600, 360)


def test_nothing_to_draw_is_none_and_the_command_says_so(tmp_path, capsys):
  assert curves.plot_loss(str(tmp_path)) is None
  assert curves.main([str(tmp_path)]) == 2
  assert capsys.readouterr().err.startswith('error: ')
  assert curves.main([str(tmp_path / 'missing')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ')
