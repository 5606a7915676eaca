"""`python -m t5x_lite.tasks show TASK_NAME`: print decoded examples of a task or mixture.

    show wiki_prefix_lm --num=3                 examples from the task's data
    show wiki_bert_style --text="Thank you ..." the task's objective applied to that one text
    show --all --text="Thank you ..."           every wiki objective on the text, side by side

With --text the task's own preprocessors run on a one-example source, so what is printed is
exactly what training would see for that text (chunking leaves a short text whole).
"""

from __future__ import annotations

import functools
import inspect
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import cli, gin_utils
from t5x_lite.tasks import pretraining

DEFAULT_SEQUENCE_LENGTH = {'inputs': 128, 'targets': 128}


def _text_task(task: seqio.Task, text: str, noise_density: Optional[float] = None) -> seqio.Task:
  """A copy of `task` that reads only `text` (for both splits), optionally at another density."""
  preprocessors = list(task.preprocessors)
  if noise_density is not None:
    for i, p in enumerate(preprocessors):
      if p in pretraining.OBJECTIVES.values() and 'noise_density' in inspect.signature(p).parameters:
        preprocessors[i] = functools.partial(p, noise_density=noise_density)
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors({'text': text}),
      splits=['train', 'validation'])
  return seqio.Task(f'{task.name}__show_text', source=source, preprocessors=preprocessors,
                    output_features=task.output_features, metric_fns=[])


def examples(name: str, *, num: int = 3, text: Optional[str] = None,
             noise_density: Optional[float] = None,
             sequence_length: Mapping[str, int] = DEFAULT_SEQUENCE_LENGTH,
             split: str = 'validation', seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Up to `num` token examples of task/mixture `name` (or of its objective on `text`)."""
  task = seqio.get_mixture_or_task(name)
  if text is not None:
    if not isinstance(task, seqio.Task):
      raise ValueError(f'--text needs a task, but {name!r} is a mixture; pick one of its tasks: '
                       f'{[t.name for t in task.tasks]}.')
    task = _text_task(task, text, noise_density)
  kwargs = {'use_cached': False} if isinstance(task, seqio.Task) else {}
  ds = task.get_dataset(dict(sequence_length), split=split, shuffle=False, seed=seed, **kwargs)
  return list(ds.take(num).as_numpy_iterator())


def _vocabulary(name: str) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(name).output_features['targets'].vocabulary


def decode(vocabulary: seqio.Vocabulary, ids) -> str:
  """Token ids as text, each sentinel shown as <extra_id_i>, EOS as </s>."""
  ids = [int(i) for i in ids]
  out, run = [], []
  first_sentinel = vocabulary.vocab_size - 1
  num_extra = getattr(vocabulary, 'extra_ids', 0) or 0

  def flush():
    if run:
      out.append(vocabulary.decode(run))
      run.clear()

  for i in ids:
    if i == 1:
      flush(); out.append('</s>')
    elif num_extra and i > first_sentinel - num_extra:
      flush(); out.append(f'<extra_id_{first_sentinel - i}>')
    else:
      run.append(i)
  flush()
  return ' '.join(s for s in out if s)


def format_examples(name: str, exs: Sequence[Mapping[str, np.ndarray]]) -> str:
  vocabulary = _vocabulary(name)
  lines = [f'== {name}']
  for n, ex in enumerate(exs):
    for key in ('inputs', 'targets'):
      if key in ex:
        lines.append(f'  [{n}] {key:7s} ({len(ex[key])} ids): {decode(vocabulary, ex[key])}')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (flags: t5x_lite.cli); bad input prints `error: ...` on one line and exits 2."""
  return gin_utils.run_cli(_show, argv)


def _show(argv: Sequence[str]) -> int:
  parser = cli.parser('tasks')
  args = parser.parse_args(argv)
  if args.all == bool(args.name):
    parser.error('give a task name or --all (not both).')
  if args.noise_density is not None and args.text is None:
    parser.error('--noise_density only applies with --text.')
  names = ([pretraining.task_name('wiki', o) for o in pretraining.OBJECTIVES] if args.all
           else [args.name])
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  for name in names:
    if name not in known:
      parser.error(f'unknown task {name!r}; registered: '
                   f'{", ".join(sorted(n for n in known if n.startswith(("wiki", "c4"))))}')
  lengths = {key: getattr(args, f'{key}_length') or DEFAULT_SEQUENCE_LENGTH[key]
             for key in DEFAULT_SEQUENCE_LENGTH}
  for name in names:
    exs = examples(name, num=args.num, text=args.text, noise_density=args.noise_density,
                   sequence_length=lengths, split=args.split,
                   seed=args.seed)
    print(format_examples(name, exs))
  return 0
