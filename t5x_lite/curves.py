"""The loss curve of a run as a PNG, drawn from MODEL_DIR/metrics.jsonl when training ends, so a
first run shows whether it learned without starting TensorBoard.

    python -m t5x_lite.curves MODEL_DIR     # redraw MODEL_DIR/loss.png
"""

from __future__ import annotations

import io
import json
import os
import sys

from t5x_lite import cli, gin_utils, storage

PNG = 'loss.png'
SMOOTH = 10  # the darker line: mean over up to this many logged steps (an eighth of them)


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl (missing: none); a torn last line (a killed writer) is skipped."""
  rows = []
  try:
    text = storage.read_text(path) or ''
  except OSError:
    return rows
  for line in text.splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


def read_losses(model_dir: str) -> tuple[list[int], list[float]]:
  """(steps, training losses) of every logged step, in order; rows without a loss are skipped."""
  rows = [r for r in read_metrics(os.path.join(model_dir, 'metrics.jsonl'))
          if 'loss' in r and 'step' in r]
  return [int(r['step']) for r in rows], [float(r['loss']) for r in rows]


def plot_loss(model_dir: str, title: str | None = None) -> str | None:
  """Writes MODEL_DIR/loss.png (raw and smoothed training loss against step); returns its path,
  or None when fewer than two steps were logged."""
  steps, losses = read_losses(model_dir)
  if len(steps) < 2:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  k = max(1, min(SMOOTH, len(losses) // 8))
  smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
            for i in range(len(losses))]
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
  ax.plot(steps, losses, color='tab:blue', alpha=0.3, linewidth=0.8, label='logged')
  ax.plot(steps, smooth, color='tab:blue', linewidth=1.8, label=f'mean of {k}')
  ax.set_xlabel('step')
  ax.set_ylabel('training loss (nats per target token)')
  ax.set_title(title or os.path.basename(os.path.normpath(model_dir)))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(model_dir, PNG)
  png = io.BytesIO()
  fig.savefig(png, format='png')
  plt.close(fig)
  storage.write_atomically(path, png.getvalue())
  return path


def main(argv=None) -> int:
  """The command (flags: t5x_lite.cli); bad input prints `error: ...` on one line and exits 2."""
  def run(rest):
    model_dir = cli.parser('curves').parse_args(rest).model_dir
    if not os.path.isdir(model_dir):
      raise gin_utils.UsageError(f'{model_dir} is not a directory; give the MODEL_DIR of a run.')
    path = plot_loss(model_dir)
    if path is None:
      raise gin_utils.UsageError(f'{model_dir}/metrics.jsonl has fewer than two logged losses; '
                                 'train longer.')
    print(path)

  return gin_utils.run_cli(run, argv)


if __name__ == '__main__':
  sys.exit(main())
