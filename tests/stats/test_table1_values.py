"""Table 1's p values against R's (issue 16): Welch's t-test (R's t.test default, not Student's) and Pearson's
chi-square with Yates' correction on a 2x2 table (R's chisq.test default), none on 2x3.

The numbers were computed with R 4 (r-base-core) and are written here, with the R code that made them:

    hi <- 60 + ((0:29) * 7) %% 11;  lo <- 50 + ((0:24) * 13) %% 37
    t.test(hi, lo)$p.value                        # 0.433038921424347  (Welch)
    t.test(hi, lo, var.equal = TRUE)$p.value      # 0.393468267230548  (Student: what the bug would give)
    sex <- matrix(c(20, 10, 8, 17), nrow = 2)     # high: m 20, f 10; low: m 8, f 17
    chisq.test(sex)$p.value                       # 0.0220282590729044 (Yates)
    chisq.test(sex, correct = FALSE)$p.value      # 0.0104453608171268 (uncorrected)
    stage <- matrix(c(12, 10, 8, 5, 9, 11), nrow = 3)
    chisq.test(stage)$p.value                     # 0.225514575664285
"""

import pandas as pd
import pytest

from TMBRBLib.stats import table1

R_WELCH, R_STUDENT = 0.433038921424347, 0.393468267230548
R_YATES, R_UNCORRECTED = 0.0220282590729044, 0.0104453608171268
R_STAGE = 0.225514575664285


@pytest.fixture(scope="module")
def cohort():
    hi = [60 + (i * 7) % 11 for i in range(30)]
    lo = [50 + (i * 13) % 37 for i in range(25)]
    sex = ["m"] * 20 + ["f"] * 10 + ["m"] * 8 + ["f"] * 17
    stage = ["I"] * 12 + ["II"] * 10 + ["III"] * 8 + ["I"] * 5 + ["II"] * 9 + ["III"] * 11
    return pd.DataFrame({"tmb": ["high"] * 30 + ["low"] * 25, "age": hi + lo, "sex": sex, "stage": stage})


def _p(result, variable):
    rows = result.table[(result.table["variable"] == variable) & result.table["p"].notna()]
    assert len(rows) == 1
    return float(rows["p"].iloc[0]), rows["test"].iloc[0]


def test_continuous_uses_welch_as_r(cohort):
    p, test = _p(table1(cohort, "tmb", continuous=["age"]), "age")
    assert test == "Welch t-test"
    assert p == pytest.approx(R_WELCH, rel=1e-9)
    assert abs(p - R_STUDENT) > 0.03  # the two tests differ on these data: the check means something


def test_equal_var_gives_students_as_r(cohort):
    p, test = _p(table1(cohort, "tmb", continuous=["age"], equal_var=True), "age")
    assert test == "t-test" and p == pytest.approx(R_STUDENT, rel=1e-9)


def test_categorical_chi_square_as_r(cohort):
    r = table1(cohort, "tmb", categorical=["sex", "stage"])
    p, test = _p(r, "sex")
    assert test == "chi-square" and p == pytest.approx(R_YATES, rel=1e-9)
    assert abs(p - R_UNCORRECTED) > 0.01
    p, test = _p(r, "stage")
    assert test == "chi-square" and p == pytest.approx(R_STAGE, rel=1e-9)
    cells = r.table.set_index(["variable", "level"])
    assert cells.loc[("sex", "m"), "high (n=30)"] == "20 (66.7)" and cells.loc[("sex", "f"), "low (n=25)"] == "17 (68.0)"
