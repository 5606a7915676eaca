"""Evaluation: seqio's Evaluator runs each task's metric functions on our decoded predictions and
scores. Used every EVAL_PERIOD steps by the trainer and on its own:

    python -m t5x_lite.eval --gin_file=gin/runs/finetune_tiny.gin [--checkpoint_dir=D]

(`--checkpoint_dir` defaults to MODEL_DIR; a MODEL_DIR, its checkpoints/ or one step directory.)
The metrics are printed and appended to MODEL_DIR/metrics.jsonl and TensorBoard as
`eval/<task>/<metric>` at the checkpoint's step.
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('eval'))

import json
from typing import Mapping

import gin
import numpy as np
import seqio
from flax import nnx

from t5x_lite import cli, decoding, gin_utils, infer, loading, progress, vocab
from t5x_lite.data import pipeline
from t5x_lite.models import T5Config


@gin.configurable
class Evaluator:
  """seqio.Evaluator over one task or mixture, with predict/score functions for our models.

  gin: `Evaluator.batch_size`, `.split`, `.num_examples` (None = the whole split). The eval data is read and cached once (unpacked, in order); each `evaluate(model)` decodes it in
  fixed-size batches (the last one padded, so the jitted decoder compiles once).
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               config: T5Config, *, batch_size: int = 32, split: str = 'validation',
               num_examples: int | None = None):
    self.config = config
    self.batch_size = batch_size
    self.max_decode_length = task_feature_lengths['targets']
    self._evaluator = seqio.Evaluator(
        mixture_or_task_name, feature_converter=pipeline.feature_converter(config, pack=False),
        eval_split=split, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
        use_memory_cache=True, async_compute_metrics=False)
    self.task_names = [t.name for t in self._evaluator.eval_tasks]

  def evaluate(self, model: nnx.Module) -> dict[str, float]:
    """{'eval/<task>/<metric>': value} for every task with metric functions."""
    if not self.task_names:
      return {}
    all_metrics, _ = self._evaluator.evaluate(
        compute_metrics=True,
        predict_fn=lambda ds, *_: self._predict(model, ds),
        score_fn=lambda ds, *_: self._score(model, ds))
    out = {}
    for task, metrics in (all_metrics.result() or {}).items():
      for name, value in metrics.items():
        out[f'eval/{task}/{name}'] = float(getattr(value, 'value', value))
    return out

  def _batches(self, ds):
    """(indices, numpy feature batch padded to batch_size rows) from seqio's enumerated dataset."""
    for index, features in ds.batch(self.batch_size).as_numpy_iterator():
      n = len(index)
      pad = self.batch_size - n
      batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in features.items()}
      yield index.tolist(), n, batch

  def _predict(self, model, ds):
    out = []
    for indices, n, batch in self._batches(ds):
      tokens, _ = decoding.decode(model, batch, max_decode_length=self.max_decode_length)
      tokens = np.asarray(tokens)[:n]
      out.extend(zip(indices, tokens.tolist()))
    return out

  def _score(self, model, ds):
    out = []
    for indices, n, batch in self._batches(ds):
      scores = infer.score_batch(model, batch)[:n]
      out.extend(zip(indices, np.asarray(scores).tolist()))
    return out


def validation_loss(model: nnx.Module, config: T5Config, mixture_or_task_name: str,
                    task_feature_lengths: Mapping[str, int], batch_size: int,
                    max_batches: int = 0) -> dict:
  """Teacher-forced loss over the task's validation split, packed as in training: nats per target
  token, without z-loss, over whole batches only (one compile, and the same examples for every
  model of a sweep); `max_batches` > 0 stops early. UsageError when not one whole batch fits."""
  batches = pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, batch_size,
                                 split='validation', shuffle=False, num_epochs=1,
                                 feature_converter=pipeline.feature_converter(config))
  nll = tokens = 0.0
  n = 0
  for batch in batches:
    if len(batch['decoder_target_tokens']) < batch_size or (max_batches and n >= max_batches):
      break
    nll -= float(np.sum(infer.score_batch(model, batch)))
    tokens += float(np.sum(batch['decoder_loss_weights']))
    n += 1
  if not tokens:
    raise gin_utils.UsageError(f'the validation split of {mixture_or_task_name} gave no whole '
                               f'batch of {batch_size}.')
  return {'loss': nll / tokens, 'tokens': tokens, 'batches': n}


def has_metrics(mixture_or_task_name: str) -> bool:
  """Whether any task of the task or mixture defines metric functions (pretraining tasks don't)."""
  task = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
  return any(t.metric_objs for t in tasks)


@gin.configurable
def evaluate(*,
             model_config: T5Config = gin.REQUIRED,
             model_dir: str = gin.REQUIRED,
             checkpoint_dir: str | None = None,
             mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED) -> dict[str, float]:
  """Evaluates the checkpoint at `checkpoint_dir` (default: MODEL_DIR) and logs the metrics there."""
  vocabulary = vocab.get_vocabulary()
  from t5x_lite import tasks  # pylint: disable=import-outside-toplevel  (registers the tasks)
  tasks.register_all(vocabulary)
  if not has_metrics(mixture_or_task_name):
    raise gin_utils.UsageError(f'{mixture_or_task_name!r} has no metric functions to evaluate '
                               '(pretraining tasks have none); pick a fine-tuning task.')
  loaded = loading.load_model(model_config, checkpoint_dir or model_dir)
  evaluator = Evaluator(mixture_or_task_name, task_feature_lengths, model_config)
  metrics = evaluator.evaluate(loaded.model)
  step = loaded.step
  writer = progress.MetricsWriter(model_dir, step)
  writer.write(step, metrics)
  writer.close()
  print(json.dumps({'step': step, 'checkpoint': str(loaded.step_dir), **metrics}), flush=True)
  return metrics


def main(argv=None) -> int:
  def run(rest):
    args = cli.parser('eval').parse_args(rest)
    try:
      evaluate(checkpoint_dir=args.checkpoint_dir)
    except FileNotFoundError as e:
      raise gin_utils.UsageError(str(e)) from e
  return gin_utils.run_main(run, argv)
