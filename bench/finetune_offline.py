"""Fine-tuning the README's pretrained tiny model on the offline labelled tasks, against the
majority-class baseline and the same model trained from scratch, on each task's validation split.

  make pretrain && .venv/bin/python bench/finetune_offline.py [--steps=600] \
      [--pretrained=/tmp/t5x_lite/pretrain_tiny] [--work_dir=/tmp/t5x_lite/finetune_offline] \
      [--out=bench/results/finetune_offline.md]

Each run is `python -m t5x_lite.train --gin_file=gin/runs/finetune_tiny.gin` with the task, its
lengths and the step count overridden; its score is the seqio evaluation at the last step (greedy
decoding, the task's metric functions). The baseline answers the training split's most common
label for every validation example, scored by the same metric functions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASKS = {'trec_coarse': {'inputs': 64, 'targets': 8},
         'movie_sentiment': {'inputs': 128, 'targets': 8}}


def last_eval(model_dir: str, task: str) -> dict:
  """The eval/<task>/* metrics of the last step that has them."""
  from t5x_lite import curves  # pylint: disable=import-outside-toplevel
  found = {}
  for row in curves.read_metrics(os.path.join(model_dir, 'metrics.jsonl')):
    scores = {k.split('/')[-1]: v for k, v in row.items() if k.startswith(f'eval/{task}/')}
    if scores:
      found = scores
  return found


def majority_baseline(task_name: str) -> tuple[str, dict]:
  """(the training split's most common label, the task's metrics for always answering it)."""
  # t5x_lite first: quiet start-up.
  import t5x_lite  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import seqio  # pylint: disable=import-outside-toplevel
  from t5x_lite.data import labelled  # pylint: disable=import-outside-toplevel
  from t5x_lite.tasks import finetuning  # pylint: disable=import-outside-toplevel
  dataset = finetuning.LABELLED_TASKS[task_name][0]
  rows = list(labelled.SOURCES[dataset]())
  train = collections.Counter(label for i, _, label in rows if labelled.split_of(i) == 'train')
  majority = train.most_common(1)[0][0]
  targets = [label for i, _, label in rows if labelled.split_of(i) == 'validation']
  scores = {}
  for fn in seqio.get_mixture_or_task(task_name).metric_fns:
    scores.update(fn(targets, [majority] * len(targets)))
  return majority, scores


def train(task: str, model_dir: str, steps: int, pretrained: str | None) -> float:
  lengths = TASKS[task]
  flags = [f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.MODEL_DIR='{model_dir}'",
           f'--gin.TRAIN_STEPS={steps}', f'--gin.EVAL_PERIOD={steps}',
           f'--gin.CHECKPOINT_PERIOD={steps}', f'--gin.TASK_FEATURE_LENGTHS={lengths!r}']
  if pretrained is None:
    flags.append('--gin.train.initial_checkpoint_path=None')
  else:
    flags.append(f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'")
  start = time.time()
  with open(model_dir + '.log', 'w') as log:
    subprocess.run([sys.executable, '-m', 't5x_lite.train',
                    '--gin_file=gin/runs/finetune_tiny.gin', *flags],
                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
  return time.time() - start


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--pretrained', default='/tmp/t5x_lite/pretrain_tiny')
  parser.add_argument('--work_dir', default='/tmp/t5x_lite/finetune_offline')
  parser.add_argument('--out', default=os.path.join(REPO, 'bench/results/finetune_offline.md'))
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.pretrained, 'checkpoints')):
    sys.exit(f'error: no checkpoint in {args.pretrained}; run `make pretrain` first (or pass '
             '--pretrained=MODEL_DIR).')
  os.makedirs(args.work_dir, exist_ok=True)
  results = []
  for task in TASKS:
    majority, baseline = majority_baseline(task)
    row = {'task': task, 'majority_label': majority, 'majority': baseline}
    for kind, init in (('finetuned', args.pretrained), ('scratch', None)):
      model_dir = os.path.join(args.work_dir, f'{task}_{kind}')
      row[f'{kind}_s'] = train(task, model_dir, args.steps, init)
      row[kind] = last_eval(model_dir, task)
      print(task, kind, row[kind], f"{row[f'{kind}_s']:.0f} s", flush=True)
    results.append(row)

  metric_names = {r['task']: sorted(r['majority']) for r in results}
  lines = [f'# Fine-tuning on offline labelled data ({args.steps} steps, batch 16)', '',
           f'Pretrained model: `{args.pretrained}` (gin/runs/pretrain_tiny.gin, the README\'s '
           'first command). Each score is on the task\'s validation split (greedy decoding, the '
           'task\'s metric functions, in %); the baseline always answers the training split\'s '
           'most common label.', '',
           '| task | metric | majority-class baseline | from scratch | fine-tuned (pretrained) |',
           '|---|---|---|---|---|']
  for r in results:
    for m in metric_names[r['task']]:
      lines.append(f"| {r['task']} | {m} | {r['majority'][m]:.1f} "
                   f"(always \"{r['majority_label']}\") | {r['scratch'].get(m, float('nan')):.1f} "
                   f"| {r['finetuned'].get(m, float('nan')):.1f} |")
  times = ', '.join(f"{r['task']} {r['finetuned_s']:.0f} s fine-tuned / {r['scratch_s']:.0f} s "
                    'from scratch' for r in results)
  lines += ['', f'Wall time per run (training + evaluation, this machine): {times}.', '']
  with open(args.out, 'w') as f:
    f.write('\n'.join(lines))
  with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
    json.dump(results, f, indent=1)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
