"""DeLong's paired test on a case small enough to work out by hand (issue 16: mutation testing found the result's
fields other than the AUCs and p unchecked).

Cases (y = 1): score1 0.9, 0.4; score2 0.8, 0.7. Controls: score1 0.5, 0.1; score2 0.6, 0.2.
Placements (share of the other group beaten, "higher = case"):
  score1: cases V10 = (1, 1/2), controls V01 = (1/2, 1): AUC1 = 3/4
  score2: cases V10 = (1, 1), controls V01 = (1, 1): AUC2 = 1
DeLong covariance = S10 / m + S01 / n (m = n = 2, sample covariances of the placements):
  var1 = 0.125 / 2 + 0.125 / 2 = 0.125, var2 = 0, cov = 0
Z = (3/4 - 1) / sqrt(0.125) = -0.70710678, p = 2 (1 - Phi(0.70710678)) = 0.47950012.
"""

import math

import pytest

from TMBRBLib.stats import delong_test
from TMBRBLib.stats.errors import TMBRBStatsInputError

Y = [1, 1, 0, 0, 1]
S1 = [0.9, 0.4, 0.5, 0.1, float("nan")]  # the last row misses a score: dropped
S2 = [0.8, 0.7, 0.6, 0.2, 0.3]


def test_every_field_of_the_paired_test_by_hand():
    t = delong_test(Y, S1, S2)
    assert (t.name1, t.name2) == ("score1", "score2")
    assert (t.auc1, t.auc2, t.difference) == (0.75, 1.0, -0.25)
    assert (t.variance1, t.variance2, t.covariance) == (0.125, 0.0, 0.0)
    assert t.z == pytest.approx(-1 / math.sqrt(2), rel=1e-12)
    assert t.p_value == pytest.approx(0.4795001221869535, rel=1e-9)
    assert (t.direction1, t.direction2) == ("<", "<")
    assert (t.n_cases, t.n_controls, t.n_dropped) == (2, 2, 1)
    named = delong_test(Y, S1, S2, name1="TMBRB", name2="TMB")
    assert (named.name1, named.name2) == ("TMBRB", "TMB")


def test_a_given_direction_is_used_not_the_automatic_one():
    # score1 read as "lower = case": V10 = (0, 1/2), V01 = (1/2, 0): AUC 1/4, the same variance 0.125
    t = delong_test(Y, S1, S2, direction1=">")
    assert (t.direction1, t.direction2, t.auc1, t.auc2) == (">", "<", 0.25, 1.0)
    assert t.z == pytest.approx(-0.75 / math.sqrt(0.125), rel=1e-12)
    t = delong_test(Y, S2, S1, direction2=">")
    assert (t.direction1, t.direction2, t.auc1, t.auc2) == ("<", ">", 1.0, 0.25)


def test_the_positive_class_is_the_one_given():
    labels = ["mut", "mut", "wt", "wt", "mut"]
    t = delong_test(labels, S1, S2, positive="mut", direction1="<", direction2="<")
    assert (t.auc1, t.auc2, t.n_cases, t.n_controls) == (0.75, 1.0, 2, 2)
    # by default the later-sorted value ("wt") is the case: the same directions give 1 - AUC
    t = delong_test(labels, S1, S2, direction1="<", direction2="<")
    assert (t.auc1, t.auc2) == (0.25, 0.0)


def test_messages_name_the_score_and_the_label():
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'score1' must be numeric"):
        delong_test(Y, ["a", 0.4, 0.5, 0.1, 0.2], S2)
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'TMB' must be numeric"):
        delong_test(Y, S1, ["a", 0.4, 0.5, 0.1, 0.2], name2="TMB")
    with pytest.raises(TMBRBStatsInputError) as e:
        delong_test([1, 0], [float("nan"), 0.1], [0.2, float("nan")])
    assert str(e.value) == "no complete rows: every row misses a score or the label."
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'label' has a single class"):
        delong_test([1, 1, 0], [0.1, 0.2, float("nan")], [0.3, 0.4, 0.5])
    with pytest.raises(TMBRBStatsInputError) as e:
        delong_test(Y, S2, S2, name1="a", name2="b")
    assert str(e.value) == ("the two ROC curves of 'a' and 'b' are identical in ranking (variance of the difference "
                            "is 0); DeLong's test is undefined. Compare two different scores.")
