"""The paper end to end on a tiny cohort: the phantom cohort's clinical columns, the comparator models (fit, apply,
predictions CSV, feature cache), bad manifest columns, and `python -m training paper`'s report."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.errors import TMBRBInputError
from training import comparators as C
from training.cli import main

from .conftest import TINY_ARCH, TINY_PRE, write_tiny_cohort

if importlib.util.find_spec("radiomics") is None:
    from _prereq import require
    require("dev-package", "pyradiomics-bhklab is not installed (pip install 'tmbrb[paper]')")


def _with_clinical(manifest: Path, seed: int = 0) -> Path:
    """Add clinical columns: histology follows the label (two exceptions), sex and age are noise."""
    df = pd.read_csv(manifest)
    rng = np.random.default_rng(seed)
    label = (df["tmb"] >= 10).to_numpy()
    df["histology"] = np.where(label, "squamous", "adenocarcinoma")
    df.loc[[0, 3], "histology"] = ["squamous", "adenocarcinoma"]
    df["sex"] = rng.choice(["male", "female"], len(df))
    df["age"] = rng.integers(40, 80, len(df))
    df.to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper_cohort")
    return _with_clinical(write_tiny_cohort(out, n=20, splits=["train"] * 10 + ["val"] * 4 + ["test"] * 6))


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the module: the report test reuses what the comparator test extracted."""
    return tmp_path_factory.mktemp("feature_cache")


def test_phantom_cohort_clinical_columns_follow_tmb_and_keep_the_rest():
    from TMBRBLib.phantom import MANIFEST_COLUMNS
    from TMBRBLib.phantom.clinical import CLINICAL_COLUMNS, clinical_values
    assert MANIFEST_COLUMNS[-len(CLINICAL_COLUMNS):] == CLINICAL_COLUMNS
    assert clinical_values(123, 1) == clinical_values(123, 1)  # deterministic in the case seed
    high = [clinical_values(i, 1) for i in range(800)]
    low = [clinical_values(i, 0) for i in range(800)]
    share = lambda rows, col, v: np.mean([r[col] == v for r in rows])  # noqa: E731
    gaps = {col: share(high, col, v) - share(low, col, v)
            for col, v in (("histology", "squamous"), ("smoking", "current_or_former"), ("sex", "male"),
                           ("stage", "IV"))}
    assert gaps["histology"] > 0.3 and gaps["histology"] > gaps["smoking"] > gaps["sex"] > 0  # histology strongest
    assert abs(gaps["stage"]) < 0.08 and abs(np.mean([r["age"] for r in high]) - np.mean([r["age"] for r in low])) < 2


def test_comparators_fit_apply_and_cache(cohort, feature_cache):
    df, cases = C.load_cohort(cohort)
    assert df.attrs["clinical_columns"] == ["histology", "sex", "age"]
    calls = []

    def counting(ct, mask, settings):
        calls.append(1)
        return C.extract_radiomics(ct, mask, settings)

    feats = C.case_features(cases, feature_cache, extractor=counting, progress=False)
    assert len(calls) == len(cases) and any(c.startswith("rad_original_glcm") for c in feats.columns)
    again = C.case_features(cases, feature_cache, extractor=counting, progress=False)
    assert len(calls) == len(cases)  # the re-run read every case from the cache
    pd.testing.assert_frame_equal(feats, again)
    df["tmbrb"] = np.where(df["label"] == 1, 0.7, 0.3) + np.random.default_rng(1).normal(0, 0.2, len(df))
    pred, fits = C.fit_comparators(df, feats)
    assert list(pred.columns) == ["case", "cohort", "tmb", "label"] + C.MODEL_COLUMNS + C.MEASURE_COLUMNS
    for m in C.MODEL_COLUMNS:
        assert pred[m].between(0, 1).all() and pred[m].notna().all(), m
    assert fits["clinical"]["predictors"] == ["histology"]  # the univariable test keeps histology only
    assert [r["column"] for r in fits["clinical"]["univariable"]][0] == "histology"
    assert fits["radiomic"]["cv_folds"] >= 2 and fits["radiomic"]["n_features"] > 50
    # the tiny tumours' radius is drawn independently of the label: diameter grows with volume
    assert np.corrcoef(pred["max_diameter_3d_mm"], pred["volume_ml"] ** (1 / 3))[0, 1] > 0.9
    # TMBRB + histology is one fit (the stats package's glm-checked logistic regression): its coefficients and the
    # prediction column come from it, with R's level names
    from TMBRBLib.stats import logistic_combination
    train = (df["cohort"] == "train").to_numpy()
    r = logistic_combination(df[train], "label", ["tmbrb", "histology"], positive=1)
    assert list(fits["tmbrb_histology"]["coefficients"]) == ["tmbrb", "histology[squamous]"]
    np.testing.assert_allclose(pred.loc[train, "tmbrb_histology"], r.fitted, rtol=1e-9)
    np.testing.assert_allclose([t["coef"] for t in fits["tmbrb_histology"]["table"]], r.table["coef"], rtol=1e-12)


def test_seed_grown_mask_when_the_manifest_has_none(cohort, tmp_path, monkeypatch):
    df = pd.read_csv(cohort).drop(columns=["tumour"])
    m = cohort.parent / "no_mask.csv"
    df.to_csv(m, index=False)
    _, cases = C.load_cohort(m)
    feats = C.case_features(cases[:2], tmp_path / "cache", radiomics=False, progress=False)
    assert (feats["mask_source"] == "seed-grown").all() and (feats["volume_ml"] > 0).all()
    # the cache of a seed-grown mask is keyed on the segmentation rules and the version; a manifest mask's is not
    from TMBRBLib import proposal
    _, with_mask = C.load_cohort(cohort)
    before = [C._cache_key(c, "measures", {}) for c in (cases[0], with_mask[0])]
    monkeypatch.setitem(proposal.DEFAULTS, "ground_glass_share", proposal.DEFAULTS["ground_glass_share"] + 0.1)
    assert C._cache_key(cases[0], "measures", {}) != before[0]
    assert C._cache_key(with_mask[0], "measures", {}) == before[1]
    monkeypatch.undo()
    monkeypatch.setattr("TMBRBLib.__version__", "99.0")
    assert C._cache_key(cases[0], "measures", {}) != before[0]


def test_bad_manifest_columns_give_a_clear_error(cohort, tmp_path):
    with pytest.raises(TMBRBInputError, match=r"lacks the clinical column\(s\) \['ecog'\]"):
        C.load_cohort(cohort, ["histology", "ecog"])
    df = pd.read_csv(cohort)
    df.loc[2, "histology"] = None
    bad = cohort.parent / "bad_empty_cell.csv"  # beside the CTs (relative paths)
    df.to_csv(bad, index=False)
    with pytest.raises(TMBRBInputError, match="no value in the clinical column 'histology'"):
        C.load_cohort(bad)
    df = pd.read_csv(cohort)
    df["split"] = np.where(df["tmb"] >= 10, "test", "train")  # no High-TMB case to fit on
    bad = cohort.parent / "bad_one_class.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(TMBRBInputError, match="'train' split needs both High- and Low-TMB"):
        C.load_cohort(bad)
    df = pd.read_csv(cohort).drop(columns=["histology"])
    bad = cohort.parent / "bad_no_histology.csv"
    df.to_csv(bad, index=False)
    assert main(["paper", "--work", str(tmp_path / "w"), "--manifest", str(bad), "--clinical-columns", "histology",
                 "--no-progress"]) == 2
    assert not (tmp_path / "w" / "run").exists()  # stopped before any training


def _pdf_pages(path: Path) -> int:
    """Pages of a matplotlib PDF (its page objects are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


def _figure_titles(html: str):
    import html as _html
    return [_html.unescape(t) for t in re.findall(r'<img alt="([^"]*)"', html)]


def test_paper_command_builds_the_report_and_resumes(cohort, feature_cache, tmp_path, capsys, monkeypatch):
    import TMBRBLib.bundle
    from TMBRBLib.phantom import write_immunotherapy_cohort
    ici = write_immunotherapy_cohort(tmp_path / "ici.csv", n=80, seed=0)
    loads = []
    real_load = TMBRBLib.bundle.load_bundle
    monkeypatch.setattr(TMBRBLib.bundle, "load_bundle", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    work = tmp_path / "work"
    args = ["paper", "--work", str(work), "--manifest", str(cohort), "--immunotherapy", str(ici), "--epochs", "1",
            "--architecture", TINY_ARCH, "--preprocessing", TINY_PRE, "--margin-vox", "3", "--batch-size", "4",
            "--threads", "1", "--no-progress", "--shifts", "0", "--cox-covariates", "ecog", "sex",
            "--feature-cache", str(feature_cache), "--permutations", "500"]
    assert main(args) == 0
    assert len(loads) == 2  # export's save_bundle, then the paper's one load for scoring and provenance
    pred = pd.read_csv(work / "predictions.csv")
    assert {"tmbrb", "radiomic", "clinical", "diameter", "volume"} <= set(pred.columns)
    # the 1-epoch model's scores may leave TMBRB + histology without a maximum-likelihood fit: then a note says so
    notes = json.loads((work / "comparators.json").read_text())["notes"]
    assert "tmbrb_histology" in pred.columns or any(n.startswith("no tmbrb_histology model: ") for n in notes), notes
    assert set(pred["cohort"]) == {"train", "val", "test"}
    html = (work / "report.html").read_text()
    for title in ("paper figure 2A/B", "paper figure 2C/D", "paper figure 2G", "paper figure 2E/F",
                  "supplementary figure S2", "paper figure 3A/B", "paper figure 4", "paper figure 5"):
        assert re.search(rf'<img alt="[^"]*{re.escape(title)}', html), title
    assert html.index("figure 2A/B") < html.index("figure 2C/D") < html.index("figure 3A/B") < html.index("figure 5")
    for heading in ("DeLong tests against TMBRB", "TMBRB + histology", "Stratified analysis", "Provenance"):
        assert heading in html, heading
    rep = json.loads((work / "report.json").read_text())
    assert {r["model"] for r in rep["paper"]["roc"]} >= {"tmbrb", "radiomic", "clinical", "diameter", "volume"}
    assert rep["provenance"]["manifest_sha256"] and len(rep["provenance"]["model_sha256"]) == 64
    # a shared report names files, not the machine's folders
    for text in ((work / "report.json").read_text(), (work / "report.html").read_text()):
        assert str(tmp_path) not in text and str(work) not in text
    assert "OS" in html and rep["paper"]["os"]["cutpoint"]["cutpoint"] > 0
    assert rep["paper"]["os"]["cutpoint"]["permutations"] == 500 and "p (500 permutations)" in html
    # the PDF: a title page, one page per figure of the HTML (same titles, same order), then the tables as text
    pdf = rep["paper"]["pdf"]
    assert pdf["figure_pages"] == _figure_titles(html) and len(pdf["figure_pages"]) >= 8
    assert pdf["text_pages"] >= 1 and _pdf_pages(work / "report.pdf") == pdf["pages"] == 1 + len(pdf["figure_pages"]) + pdf["text_pages"]
    assert (work / "radiomics_settings.json").is_file()
    # a second run skips training and scoring (state.json) and extracts nothing (the cache)
    state = (work / "state.json").stat().st_mtime_ns
    mtime = (work / "bundle" / "configs" / "metadata.json").stat().st_mtime_ns
    capsys.readouterr()
    loads.clear()
    assert main(args) == 0
    assert len(loads) == 1  # no training: the paper loads (and hashes) the bundle once
    err = capsys.readouterr().err
    assert "model: trained before, reused" in err and "score: " not in err
    assert (work / "bundle" / "configs" / "metadata.json").stat().st_mtime_ns == mtime
    assert (work / "state.json").stat().st_mtime_ns == state


def test_control_cohort_report_states_the_control_result(feature_cache, tmp_path):
    """A cohort whose images carry no TMB signal (signal 'none'): the report says whether every image-based
    model's test AUC CI includes 0.5, from the ROC table."""
    cohort = _with_clinical(write_tiny_cohort(tmp_path / "control", n=20, seed=3, shell_hu=0.0,
                                              splits=["train"] * 10 + ["val"] * 4 + ["test"] * 6))
    df = pd.read_csv(cohort).rename(columns={"signal": "signal_mask"})
    df["signal"] = "none"  # the kind, as a phantom cohort's manifest records it
    df.to_csv(cohort, index=False)
    work = tmp_path / "work"
    assert main(["paper", "--work", str(work), "--manifest", str(cohort), "--epochs", "1", "--architecture", TINY_ARCH,
                 "--preprocessing", TINY_PRE, "--margin-vox", "3", "--batch-size", "4", "--threads", "1",
                 "--no-progress", "--shifts", "0", "--feature-cache", str(feature_cache), "--permutations", "0"]) == 0
    rep = json.loads((work / "report.json").read_text())["paper"]
    roc = {r["model"]: r for r in rep["roc"] if r["cohort"] == "test"}
    control = rep["control"]
    assert [r["model"] for r in control["test"]] == ["tmbrb", "radiomic", "diameter", "volume"]
    for r in control["test"]:
        assert r["AUC"] == roc[r["model"]]["AUC"]
        assert r["CI includes 0.5"] == (roc[r["model"]]["CI low"] <= 0.5 <= roc[r["model"]]["CI high"])
    assert control["as_expected"] == all(r["CI includes 0.5"] for r in control["test"])
    assert rep["finding"].startswith("Control cohort (signal none), test split AUC: tmbrb ")
    assert ("as expected with no signal" in rep["finding"]) == control["as_expected"]
    assert "keep their link to TMB" in rep["finding"]  # the clinical columns are simulated from TMB
    html = (work / "report.html").read_text()
    assert "Control cohort (signal none)" in html and (work / "report.pdf").is_file()
    assert "TMBRB AUC" not in rep["finding"]  # not the TMBRB-vs-radiomic sentence of a signal cohort


def test_cohort_signal_comes_from_the_manifest_or_the_option(cohort, tmp_path):
    from types import SimpleNamespace

    from training.paper import cohort_signal
    df = pd.read_csv(cohort)
    assert cohort_signal(cohort, SimpleNamespace(manifest=str(cohort), signal="peritumoral")) is None
    for value in ("none", "core"):
        df.assign(signal=value).to_csv(tmp_path / "m.csv", index=False)
        assert cohort_signal(tmp_path / "m.csv", SimpleNamespace(manifest="m.csv", signal="peritumoral")) == value
    assert cohort_signal(cohort, SimpleNamespace(manifest=None, signal="none")) == "none"  # the phantoms written


def test_finding_says_which_model_is_ahead():
    from training.paper import finding

    def res(auc_t, auc_r, p=0.01):
        return {"roc": [{"cohort": "test", "model": m, "AUC": v, "CI low": v - 0.1, "CI high": v + 0.1}
                        for m, v in (("tmbrb", auc_t), ("radiomic", auc_r))],
                "delong": [{"cohort": "test", "TMBRB vs": "radiomic", "DeLong p": p}]}
    assert "falls behind TMBRB, as in the paper" in finding(res(0.85, 0.6), "peritumoral")
    assert "does NOT fall behind" in finding(res(0.6, 0.85), "core")
    # a higher AUC without a significant DeLong test is not "falls behind" (the demo cohort: 0.861 vs 0.841, p = 0.8)
    for p in (0.8, float("nan")):
        text = finding(res(0.861, 0.841, p), "peritumoral")
        assert "no significant difference" in text and "falls behind TMBRB, as in the paper" not in text
    assert "no TMBRB or no radiomic AUC" in finding({"roc": []}, None)
