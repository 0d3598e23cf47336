"""What a reader sees in the Kaplan-Meier and ROC figures, read back from the returned matplotlib objects.

The plotted steps are the Kaplan-Meier estimates, the shaded band is the confidence band at every time, censor marks
sit on the curve at the censored times, the numbers under the plot are the numbers at risk, and labels, legend, limits
and layout are those the paper's figures use (issue 16: no test looked at a figure).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from TMBRBLib.stats import kaplan_meier, plot_roc_curves, roc_analysis  # noqa: E402
from TMBRBLib.stats.survival import plot_km  # noqa: E402

# group A: S = 5/6 at 1, 5/8 at 3, 5/12 at 4; censored at 2, 5, 6. Group B: S = 5/6 at 2, 2/3 at 4, 4/9 at 8;
# censored at 6, 10, 12. The medians are 4 and 8.
T = [1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12]
E = [1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0]
G = ["A"] * 6 + ["B"] * 6


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def km():
    return kaplan_meier(T, E, G, conf_type="log-log", time_label="Months")


def _curves(ax):
    return [ln for ln in ax.lines if ln.get_drawstyle() == "steps-post"]


def _marks(ax):
    return [ln for ln in ax.lines if ln.get_marker() == "|"]


# ---------------------------------------------------------------- Kaplan-Meier
def test_steps_are_the_estimates_from_one_at_time_zero(km):
    ax = plot_km(km)
    curves = _curves(ax)
    assert len(curves) == 2
    for line, c in zip(curves, km.curves):
        assert line.get_xdata().tolist() == [0.0] + c.table["time"].tolist()
        assert line.get_ydata().tolist() == [1.0] + c.table["surv"].tolist()
    assert curves[0].get_ydata()[[1, 3, 4]] == pytest.approx([5 / 6, 5 / 8, 5 / 12])


def test_censor_marks_sit_on_the_curve_in_its_colour(km):
    ax = plot_km(km)
    marks = _marks(ax)
    assert [m.get_xdata().tolist() for m in marks] == [[2.0, 5.0, 6.0], [6.0, 10.0, 12.0]]
    assert marks[0].get_ydata().tolist() == pytest.approx([5 / 6, 5 / 12, 5 / 12])
    assert marks[1].get_ydata().tolist() == pytest.approx([2 / 3, 4 / 9, 4 / 9])
    for m, line in zip(marks, _curves(ax)):
        assert m.get_color() == line.get_color() and m.get_linestyle() == "None"
        assert m.get_markersize() == 6


def _inside(coll, x, y):
    return any(p.contains_point((x, y)) for p in coll.get_paths())


def test_band_is_shaded_between_the_limits_at_every_time(km):
    ax = plot_km(km)
    bands = ax.collections
    assert len(bands) == 2
    for band, line, c in zip(bands, _curves(ax), km.curves):
        t = [0.0] + c.table["time"].tolist()
        lo = [1.0] + c.table["lower"].tolist()
        hi = [1.0] + c.table["upper"].tolist()
        # before the first time the band is S = 1 itself: nothing shaded above the curve
        assert not _inside(band, t[1] / 2, 1.01) and not _inside(band, t[1] / 2, 0.99)
        for i in range(1, len(t) - 1):  # each step holds from t[i] to t[i + 1]
            mid, eps = (t[i] + t[i + 1]) / 2, 1e-3
            assert _inside(band, mid, lo[i] + eps) and _inside(band, mid, hi[i] - eps), (c.group, t[i])
            assert not _inside(band, mid, lo[i] - eps) and not _inside(band, mid, hi[i] + eps), (c.group, t[i])
        # a light wash of the curve's colour without an outline
        assert to_rgba(band.get_facecolor()[0], 1.0) == to_rgba(line.get_color(), 1.0)
        assert 0 < band.get_alpha() <= 0.2
        assert list(band.get_linewidths()) == [0]


def test_band_can_be_left_out(km):
    assert len(plot_km(km, show_ci=False).collections) == 0


def test_labels_legend_title_and_limits(km):
    ax = plot_km(km, title="Overall survival")
    assert ax.get_title() == "Overall survival"
    assert plot_km(km).get_title() == "Kaplan-Meier"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Months", "Survival probability")
    assert ax.get_ylim() == (0.0, 1.02)
    assert ax.get_xlim() == pytest.approx((0.0, 12 * 1.02))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A (n=6, median 4)", "B (n=6, median 8)"]
    assert legend._loc == 3  # lower left, below the curves' start
    assert legend.get_texts()[0].get_fontsize() == 8


def test_median_not_reached_reads_nr():
    km = kaplan_meier([1, 2, 3, 4], [1, 0, 0, 0])
    ax = plot_km(km)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["all (n=4, median NR)"]
    assert len(ax.texts) == 0  # one group: no log-rank p
    assert ax.get_xlabel() == "time"  # kaplan_meier's default time_label


def test_logrank_p_in_the_top_right_corner(km):
    ax = plot_km(km)
    (text,) = ax.texts
    assert text.get_text() == f"log-rank p = {km.logrank.p_value:.3g}" == "log-rank p = 0.427"
    assert text.get_transform() is ax.transAxes and text.get_position() == (0.98, 0.95)
    assert (text.get_ha(), text.get_va()) == ("right", "top")


def test_numbers_at_risk_under_the_plot(km):
    ax = plot_km(km)
    fig = ax.figure
    assert tuple(fig.get_size_inches()) == (6.4, 5.2)
    (tab,) = [a for a in fig.axes if a is not ax]
    times = km.default_risk_times()
    assert times == [0, 2, 4, 6, 8, 10, 12] and ax.get_xticks().tolist() == times
    # group A on the top row (y = 1), B below (y = 0), each number centred under its time
    cells = {(t.get_position()[1], t.get_position()[0]): t.get_text() for t in tab.texts}
    assert [cells[(1, t)] for t in times] == ["6", "5", "3", "1", "0", "0", "0"]
    assert [cells[(0, t)] for t in times] == ["6", "6", "5", "4", "3", "2", "1"]
    assert len(tab.texts) == 14
    assert all((t.get_ha(), t.get_va(), t.get_fontsize()) == ("center", "center", 8) for t in tab.texts)
    assert [t.get_text() for t in tab.get_yticklabels()] == ["B", "A"]  # tick labels bottom to top
    assert tab.get_yticks().tolist() == [0, 1] and tab.get_yticklabels()[0].get_fontsize() == 8
    assert tab.get_ylim() == (-0.5, 1.5) and tab.get_xlim() == ax.get_xlim()
    assert tab.get_xticks().tolist() == []
    tick = tab.yaxis.get_major_ticks()[0]
    assert tick.tick1line.get_markersize() == 0 and tick.get_pad() == 14
    assert not any(s.get_visible() for s in tab.spines.values())
    assert tab.get_title(loc="left") == "Number at risk" and tab.title.get_text() == ""
    assert tab._left_title.get_fontsize() == 9


def test_table_is_a_strip_below_the_curves(km):
    ax = plot_km(km)
    (tab,) = [a for a in ax.figure.axes if a is not ax]
    a, b = ax.get_position(), tab.get_position()
    assert a.y0 > b.y1 and (a.x0, a.x1) == (b.x0, b.x1)
    # heights 4 : 1 + 0.25 per group, with a gap of 0.35 of the mean height
    assert a.height / b.height == pytest.approx(4 / 1.5)
    assert (a.y0 - b.y1) == pytest.approx(0.35 * (a.height + b.height) / 2)


def test_risk_times_given_to_the_plot():
    km = kaplan_meier(T, E, G)
    ax = plot_km(km, risk_times=[0, 5, 10])
    (tab,) = [a for a in ax.figure.axes if a is not ax]
    assert sorted((t.get_position()[0], t.get_position()[1], t.get_text()) for t in tab.texts) == [
        (0, 0, "6"), (0, 1, "6"), (5, 0, "4"), (5, 1, "2"), (10, 0, "2"), (10, 1, "0")]
    # the result's own risk times are those of the JSON
    km2 = kaplan_meier(T, E, G, risk_times=[0, 5, 10])
    ax2 = km2.plot()
    assert ax2.get_xticks().tolist() == [0, 5, 10]


def test_on_given_axes_no_table_is_drawn(km):
    fig, given = plt.subplots()
    ax = km.plot(ax=given, title="OS")
    assert ax is given and fig.axes == [given] and ax.get_title() == "OS"
    assert len(_curves(ax)) == 2 and ax.get_xlabel() == "Months"
    assert ax.get_xlim() == pytest.approx((0.0, 12 * 1.02))  # from time 0, without the table's ticks too


# ---------------------------------------------------------------- ROC
def _rocs():
    y = [0, 0, 0, 1, 1, 1, 0, 1]
    a = roc_analysis(y, [0.1, 0.3, 0.5, 0.4, 0.7, 0.9, 0.2, 0.6], name="TMBRB")
    b = roc_analysis(y, [0.2, 0.6, 0.1, 0.3, 0.5, 0.4, 0.8, 0.7], name="TMB")
    return a, b


def test_roc_curves_are_one_minus_specificity_against_sensitivity():
    a, b = _rocs()
    ax = plot_roc_curves([a, b])
    curves = [ln for ln in ax.lines if ln.get_label() in ("TMBRB", "TMB") or ln.get_label().startswith("TMB")]
    assert len(curves) == 2
    for line, r in zip(curves, (a, b)):
        assert line.get_xdata().tolist() == pytest.approx((1 - r.curve_specificity).tolist())
        assert line.get_ydata().tolist() == r.curve_sensitivity.tolist()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"TMBRB: AUC {a.auc:.3f} ({a.ci_low:.3f}-{a.ci_high:.3f})",
                      f"TMB: AUC {b.auc:.3f} ({b.ci_low:.3f}-{b.ci_high:.3f})"]
    assert labels[0].startswith("TMBRB: AUC 0.938 (")


def test_youden_point_is_a_dot_on_its_curve():
    a, b = _rocs()
    ax = plot_roc_curves([a, b])
    dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
    curves = [ln for ln in ax.lines if ln.get_label().startswith("TMB")]
    assert len(dots) == 2
    for dot, line, r in zip(dots, curves, (a, b)):
        assert dot.get_xdata().tolist() == [1 - r.youden_specificity]
        assert dot.get_ydata().tolist() == [r.youden_sensitivity]
        assert dot.get_color() == line.get_color() and dot.get_linestyle() == "None"
        assert 0 < dot.get_markersize() < plt.rcParams["lines.markersize"]
    assert curves[0].get_color() != curves[1].get_color()


def test_chance_line_axes_and_legend():
    a, _ = _rocs()
    ax = plot_roc_curves([a], title="Test cohort")
    (chance,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert list(chance.get_xdata()) == [0, 1] and list(chance.get_ydata()) == [0, 1]
    assert to_rgba(chance.get_color()) == to_rgba("grey")
    assert chance.get_linewidth() < plt.rcParams["lines.linewidth"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("1 - specificity", "Sensitivity", "Test cohort")
    assert plot_roc_curves([a]).get_title() == "ROC curves"
    assert ax.get_xlim() == (-0.01, 1.01) and ax.get_ylim() == (-0.01, 1.01)
    assert ax.get_aspect() == 1.0
    legend = ax.get_legend()
    assert legend._loc == 4 and legend.get_texts()[0].get_fontsize() == 8  # lower right, small
    assert tuple(ax.figure.get_size_inches()) == (5.0, 5.0)


def test_roc_on_given_axes():
    a, _ = _rocs()
    fig, given = plt.subplots(figsize=(3, 3))
    ax = a.plot(ax=given, title="A")
    assert ax is given and fig.axes == [given] and ax.get_title() == "A"
    assert tuple(fig.get_size_inches()) == (3.0, 3.0)
    assert ax.get_legend().get_texts()[0].get_text().startswith("TMBRB: AUC")
