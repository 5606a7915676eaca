"""t5x_lite/metrics.py: each metric against hand-worked examples and an independent computation."""

import numpy as np
import pytest
from scipy import stats

from t5x_lite import metrics


def test_accuracy_is_exact_string_match_in_percent():
  assert metrics.accuracy(['yes', 'no', 'no', 'yes'], ['yes', 'no', 'No', 'yes ']) == {
      'accuracy': 50.0}
  assert metrics.accuracy([b'entailment'], ['entailment'])['accuracy'] == 100.0  # bytes decode


def test_accuracy_refuses_mismatched_or_empty_inputs():
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.accuracy(['a', 'b'], ['a'])
  with pytest.raises(ValueError, match='No examples'):
    metrics.accuracy([], [])


def test_answer_normalisation_drops_case_punctuation_articles_and_extra_spaces():
  assert metrics.normalize_answer('  The  Beatles, an English band!') == 'beatles english band'
  assert metrics.normalize_answer('Theory of a Thing') == 'theory of thing'
  # Articles only as whole words: "another", "them" keep their letters.
  assert metrics.normalize_answer('another them') == 'another them'


def test_exact_match_takes_the_best_of_several_references():
  targets = ['The Beatles', ['Paris', 'City of Paris'], 'Denver Broncos']
  predictions = ['beatles.', 'city of paris', 'Broncos']
  assert metrics.exact_match(targets, predictions) == {'exact_match': pytest.approx(200 / 3)}


def test_token_f1_matches_hand_counts():
  # pred {cat, sat} vs gold {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3.
  assert metrics.token_f1(['A cat sat on the mat'], ['the cat sat'])['token_f1'] == (
      pytest.approx(200 / 3))
  # Repeated tokens count up to their multiplicity on both sides: gold "x b b", pred "x x b"
  # share min(1,2) x + min(2,1) b = 2 of 3 tokens each: P = R = F1 = 2/3.
  assert metrics.token_f1(['x b b'], ['x x b'])['token_f1'] == pytest.approx(200 / 3)
  # Mean over examples, max over references; disjoint answers score 0, two empty ones agree.
  scores = metrics.token_f1([['Aldous Huxley', 'Huxley'], 'red', 'The'],
                            ['Aldous Leonard Huxley', 'blue', 'an'])
  assert scores['token_f1'] == pytest.approx((0.8 + 0.0 + 1.0) / 3 * 100)


def test_binary_f1_counts_invalid_predictions_as_wrong_when_told_the_negative_label():
  targets = ['equivalent', 'equivalent', 'not_equivalent', 'not_equivalent']
  predictions = ['equivalent', 'maybe', 'maybe', 'not_equivalent']
  # Invalid → opposite of the target: TP 1, FN 1, FP 1 → F1 = 2/(2+1+1).
  strict = metrics.binary_f1(targets, predictions, positive_label='equivalent',
                             negative_label='not_equivalent')
  assert strict == {'f1': pytest.approx(50.0)}
  # Without the negative label, "maybe" is a negative: TP 1, FN 1, FP 0 → F1 = 2/3.
  lenient = metrics.binary_f1(targets, predictions, positive_label='equivalent')
  assert lenient == {'f1': pytest.approx(200 / 3)}


def test_binary_f1_is_zero_when_the_positive_class_never_appears():
  assert metrics.binary_f1(['no', 'no'], ['no', 'no'], positive_label='yes') == {'f1': 0.0}


def test_macro_f1_is_the_mean_of_per_class_f1():
  targets = ['a', 'a', 'b', 'c']
  predictions = ['a', 'b', 'b', 'junk']
  # a: TP1 FN1 → 2/3; b: TP1 FP1 → 2/3; c: FN1 → 0. Mean 4/9.
  result = metrics.macro_f1(targets, predictions, labels=['a', 'b', 'c'])
  assert result == {'mean_3class_f1': pytest.approx(400 / 9)}


def test_matthews_binary_matches_the_textbook_formula_and_the_phi_coefficient():
  # TP 6, TN 3, FP 1, FN 2: (6·3 − 1·2) / √(7·8·4·5) = 16/√1120.
  targets = ['acc'] * 8 + ['un'] * 4
  predictions = ['acc'] * 6 + ['un'] * 2 + ['un'] * 3 + ['acc']
  expected = 16 / np.sqrt(1120)
  assert metrics.matthews_corrcoef(targets, predictions)['matthews_corrcoef'] == (
      pytest.approx(100 * expected))
  phi = np.corrcoef(np.array(targets) == 'acc', np.array(predictions) == 'acc')[0, 1]
  assert expected == pytest.approx(phi)


def _one_hot_correlation(targets, predictions) -> float:
  """R_K as the correlation of one-hot matrices (Gorodkin 2004, eq. 2): independent of the
  confusion-matrix form the module uses."""
  classes = sorted(set(targets) | set(predictions))
  x = np.array([[t == c for c in classes] for t in targets], float)
  y = np.array([[p == c for c in classes] for p in predictions], float)
  x, y = x - x.mean(0), y - y.mean(0)
  return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def test_matthews_multiclass_matches_the_one_hot_correlation():
  rng = np.random.default_rng(0)
  labels = np.array(['entailment', 'neutral', 'contradiction', 'garbage'])
  targets = list(labels[rng.integers(0, 3, 200)])
  predictions = [t if rng.random() < 0.6 else labels[rng.integers(0, 4)] for t in targets]
  got = metrics.matthews_corrcoef(targets, predictions)['matthews_corrcoef']
  assert got == pytest.approx(100 * _one_hot_correlation(targets, predictions))
  assert metrics.matthews_corrcoef(targets, targets)['matthews_corrcoef'] == pytest.approx(100)


def test_matthews_is_zero_for_a_constant_prediction():
  assert metrics.matthews_corrcoef(['a', 'b', 'a'], ['a', 'a', 'a']) == {'matthews_corrcoef': 0.0}


def test_average_ranks_share_ties():
  np.testing.assert_array_equal(metrics.average_ranks(np.array([5., 1., 5., 3.])),
                                [3.5, 1., 3.5, 2.])


def test_correlations_match_scipy_on_sts_like_scores():
  rng = np.random.default_rng(1)
  gold = np.round(rng.uniform(0, 5, 300) * 5) / 5           # STS-B targets: steps of 0.2, ties
  noisy = np.clip(gold + rng.normal(0, 1, 300), 0, 5)
  targets = [f'{g:.1f}' for g in gold]
  predictions = [f'{p:.1f}' for p in np.round(noisy * 5) / 5]
  t, p = np.array(targets, float), np.array(predictions, float)
  assert metrics.pearson_corrcoef(targets, predictions)['pearson_corrcoef'] == pytest.approx(
      100 * stats.pearsonr(t, p)[0])
  assert metrics.spearman_corrcoef(targets, predictions)['spearman_corrcoef'] == pytest.approx(
      100 * stats.spearmanr(t, p)[0])


def test_spearman_rewards_monotone_predictions_that_pearson_does_not():
  targets = ['0.0', '1.0', '2.0', '3.0', '4.0', '5.0']
  predictions = ['0.0', '0.1', '0.2', '0.4', '1.6', '5.0']   # same order, curved
  assert metrics.spearman_corrcoef(targets, predictions)['spearman_corrcoef'] == pytest.approx(100)
  assert metrics.pearson_corrcoef(targets, predictions)['pearson_corrcoef'] < 85


def test_unparsable_score_predictions_fall_back_to_minus_one():
  assert metrics.to_float(' 3.8 ') == 3.8
  assert metrics.to_float('three') == metrics.UNPARSABLE_FLOAT == -1.0
  assert metrics.to_float('nan') == -1.0
  targets = ['1.0', '2.0', '3.0', '4.0']
  predictions = ['1.0', 'two', '3.0', '4.0']
  expected = stats.pearsonr([1, 2, 3, 4], [1, -1, 3, 4])[0]
  assert metrics.pearson_corrcoef(targets, predictions)['pearson_corrcoef'] == pytest.approx(
      100 * expected)


def test_correlation_of_a_constant_prediction_is_zero_not_nan():
  assert metrics.pearson_corrcoef(['1.0', '2.0'], ['3.0', '3.0']) == {'pearson_corrcoef': 0.0}
  assert metrics.spearman_corrcoef(['1.0', '2.0'], ['x', 'y']) == {'spearman_corrcoef': 0.0}
