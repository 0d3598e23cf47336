"""The paper's statistics as a toolkit (He et al., JITC 2020), checked against R.

ROC/DeLong (pROC), decision curves, Spearman, AUC across TMB cut-offs, logistic combination,
maxstat cut-point, Kaplan-Meier / log-rank / Cox (survival), Table 1, and an HTML report.
Each function takes plain arrays or a DataFrame and returns a dataclass that prints, saves
(``save_json``) and plots (``plot``). Bad input raises :class:`TMBRBStatsInputError`.
Command line: ``python -m TMBRBLib.stats.cli analyze --help``.
"""
from __future__ import annotations

from .classification import (AUCByCutoffResult, DecisionCurveResult, LogisticResult, SpearmanResult, auc_by_cutoff,
                             decision_curve, logistic_combination, spearman)
from .cox import CoxResult, CoxScanResult, cox_ph, cox_scan, plot_forest
from .cutpoint import CutpointResult, maxstat_cutpoint
from .errors import TMBRBStatsInputError, TMBRBStatsWarning
from .roc import DeLongTestResult, ROCResult, delong_test, plot_roc_curves, roc_analysis
from .survival import KMResult, LogRankResult, kaplan_meier, logrank_test, plot_km
from .table1 import Table1Result, table1

__all__ = [
    "TMBRBStatsInputError", "TMBRBStatsWarning",
    "roc_analysis", "delong_test", "plot_roc_curves", "ROCResult", "DeLongTestResult",
    "decision_curve", "DecisionCurveResult", "spearman", "SpearmanResult", "auc_by_cutoff", "AUCByCutoffResult",
    "logistic_combination", "LogisticResult", "maxstat_cutpoint", "CutpointResult",
    "kaplan_meier", "logrank_test", "plot_km", "KMResult", "LogRankResult",
    "cox_ph", "cox_scan", "plot_forest", "CoxResult", "CoxScanResult", "table1", "Table1Result",
]
