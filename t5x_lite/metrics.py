"""Text-to-text metrics as seqio metric functions: ``fn(targets, predictions) -> {name: value}``.

seqio's Evaluator passes the decoded target and prediction strings of a whole split; every function
here scores them in numpy and returns a dict whose keys are T5's metric names. Values are scaled
to 0..100 the way T5 reports them, correlations included (a Matthews or Pearson r of 0.6 is 60).

Classification is scored on the label strings themselves, not on class ids: a prediction that is
not one of the task's labels is simply wrong, which is what T5 gets by mapping it to class -1.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Optional, Sequence, Union

import numpy as np

Text = Union[str, bytes]
# The fallback for an STS-B prediction that is not a number: T5's `string_to_float` default. It is
# outside the 0..5 score range, so a model cannot gain by emitting junk.
UNPARSABLE_FLOAT = -1.0


def _text(x: Text) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  if not len(targets):
    raise ValueError('No examples to score.')


def _labels(targets: Sequence[Text], predictions: Sequence[Text]) -> tuple[np.ndarray, np.ndarray]:
  _check_lengths(targets, predictions)
  return (np.array([_text(t) for t in targets], dtype=object),
          np.array([_text(p) for p in predictions], dtype=object))


# ----------------------------------------------------------------------------- exact string match


def accuracy(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """Percent of predictions equal to their target, character for character."""
  t, p = _labels(targets, predictions)
  return {'accuracy': 100.0 * float(np.mean(t == p))}


# ------------------------------------------------------------------------- SQuAD-style answers


def normalize_answer(text: Text) -> str:
  """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.

  Makes "The Beatles." and "beatles" the same answer, so EM and F1 judge content, not form.
  """
  text = _text(text).lower()
  text = ''.join(ch for ch in text if ch not in string.punctuation)
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _references(target: Union[Text, Sequence[Text]]) -> list[str]:
  """A target is one answer or several acceptable ones (SQuAD has up to five)."""
  if isinstance(target, (str, bytes)):
    return [_text(target)]
  return [_text(t) for t in target]


def _token_f1(reference: str, prediction: str) -> float:
  ref, pred = normalize_answer(reference).split(), normalize_answer(prediction).split()
  if not ref or not pred:
    return float(ref == pred)  # both empty agree; one empty shares nothing
  shared = sum((collections.Counter(ref) & collections.Counter(pred)).values())
  if not shared:
    return 0.0
  precision, recall = shared / len(pred), shared / len(ref)
  return 2 * precision * recall / (precision + recall)


def exact_match(targets: Sequence[Union[Text, Sequence[Text]]],
                predictions: Sequence[Text]) -> dict[str, float]:
  """Percent of predictions equal to a reference after `normalize_answer` (SQuAD's EM)."""
  _check_lengths(targets, predictions)
  hits = [max(normalize_answer(r) == normalize_answer(p) for r in _references(t))
          for t, p in zip(targets, predictions)]
  return {'exact_match': 100.0 * float(np.mean(hits))}


def token_f1(targets: Sequence[Union[Text, Sequence[Text]]],
             predictions: Sequence[Text]) -> dict[str, float]:
  """Mean over examples of SQuAD's bag-of-tokens F1, best over the references of each example.

  Gives partial credit: "Aldous Huxley" for "Aldous Leonard Huxley" scores 80, not 0.
  """
  _check_lengths(targets, predictions)
  scores = [max(_token_f1(r, _text(p)) for r in _references(t))
            for t, p in zip(targets, predictions)]
  return {'token_f1': 100.0 * float(np.mean(scores))}


# ------------------------------------------------------------------------------ classification


def _f1(tp: int, fp: int, fn: int) -> float:
  """F1 = 2TP / (2TP + FP + FN); 0 when the class never occurs in targets or predictions."""
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def binary_f1(targets: Sequence[Text], predictions: Sequence[Text], *,
              positive_label: str, negative_label: Optional[str] = None) -> dict[str, float]:
  """F1 of the `positive_label` class (MRPC, QQP).

  With `negative_label` given, a prediction that is neither label counts as wrong whatever the
  target (as T5's ``f1_score_with_invalid``): a false negative on a positive example, a false
  positive on a negative one. Without it, anything but the positive label is a negative.
  """
  t, p = _labels(targets, predictions)
  target_pos = t == positive_label
  predicted_pos = p == positive_label
  if negative_label is not None:
    invalid = (p != positive_label) & (p != negative_label)
    predicted_pos = np.where(invalid, ~target_pos, predicted_pos)
  tp = int(np.sum(target_pos & predicted_pos))
  fp = int(np.sum(~target_pos & predicted_pos))
  fn = int(np.sum(target_pos & ~predicted_pos))
  return {'f1': 100.0 * _f1(tp, fp, fn)}


def macro_f1(targets: Sequence[Text], predictions: Sequence[Text], *,
             labels: Sequence[str]) -> dict[str, float]:
  """Unweighted mean over `labels` of each label's one-vs-rest F1 (CommitmentBank).

  Key ``mean_<K>class_f1`` as T5. A prediction outside `labels` is a miss for its target's class
  and a false positive for none; a label absent from both sides scores 0 and still counts.
  """
  t, p = _labels(targets, predictions)
  scores = [_f1(int(np.sum((t == c) & (p == c))), int(np.sum((t != c) & (p == c))),
                int(np.sum((t == c) & (p != c)))) for c in labels]
  return {f'mean_{len(labels)}class_f1': 100.0 * float(np.mean(scores))}


def matthews_corrcoef(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """Matthews correlation (CoLA), for any number of classes (Gorodkin's R_K).

  The classes are every string seen on either side, so an invalid prediction is a class of its own
  that no target has. From the confusion matrix C (n examples, c = trace C, t_k / p_k = how often
  class k is the target / the prediction): (c·n − t·p) / √((n² − p·p)(n² − t·t)). 0 when either
  side is constant, where the correlation is undefined.
  """
  t, p = _labels(targets, predictions)
  classes, index = np.unique(np.concatenate([t, p]).astype(str), return_inverse=True)
  n = len(t)
  confusion = np.zeros((len(classes), len(classes)))
  np.add.at(confusion, (index[:n], index[n:]), 1)
  t_k, p_k = confusion.sum(axis=1), confusion.sum(axis=0)
  denominator = np.sqrt((n * n - p_k @ p_k) * (n * n - t_k @ t_k))
  mcc = (np.trace(confusion) * n - t_k @ p_k) / denominator if denominator else 0.0
  return {'matthews_corrcoef': 100.0 * float(mcc)}


# -------------------------------------------------------------------------------- regression


def to_float(text: Text, default: float = UNPARSABLE_FLOAT) -> float:
  """The number a decoded string spells ("3.8" → 3.8), `default` if it spells none."""
  try:
    value = float(_text(text).strip())
  except ValueError:
    return default
  return value if np.isfinite(value) else default


def _floats(targets: Sequence[Text], predictions: Sequence[Text]) -> tuple[np.ndarray, np.ndarray]:
  _check_lengths(targets, predictions)
  t = np.array([float(x) if isinstance(x, (int, float)) else to_float(x) for x in targets])
  p = np.array([float(x) if isinstance(x, (int, float)) else to_float(x) for x in predictions])
  return t, p


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson's r; 0 when either side has no variance (a constant prediction explains nothing)."""
  dx, dy = x - x.mean(), y - y.mean()
  denominator = np.sqrt((dx @ dx) * (dy @ dy))
  return float(dx @ dy / denominator) if denominator else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`; tied values share their mean rank ([5, 1, 5] → [2.5, 1, 2.5])."""
  values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  last = np.cumsum(counts)           # the highest rank each distinct value spans
  first = last - counts + 1          # the lowest
  return ((first + last) / 2.0)[inverse]


def pearson_corrcoef(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """Pearson correlation of predicted and target scores (STS-B); unparsable → `UNPARSABLE_FLOAT`."""
  t, p = _floats(targets, predictions)
  return {'pearson_corrcoef': 100.0 * _pearson(t, p)}


def spearman_corrcoef(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """Spearman's rank correlation (Pearson's r of the average ranks) of the scores (STS-B)."""
  t, p = _floats(targets, predictions)
  return {'spearman_corrcoef': 100.0 * _pearson(average_ranks(t), average_ranks(p))}
