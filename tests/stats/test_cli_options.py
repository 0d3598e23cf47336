"""`tmbrb analyze <subcommand>`'s options agree with docs/statistics.md, "Command-line options".

The tables there are the reference: each option, what it takes, its default and the help text `--help` shows. The
tests parse the command line (no analysis runs), so they take well under a second: every option's default as parsed,
a value of its kind given, a wrong value or a missing required option refused with exit code 2.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from TMBRBLib.stats import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "statistics.md"


def _doc_tables():
    """{subcommand: (one-line help, [row dicts])} from the doc's "Command-line options" section."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Command-line options", 1)[1].split("\n## ", 1)[0]
    out = {}
    for block in re.split(r"^### ", section, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        m = re.fullmatch(r"`([a-z0-9-]+)`: (.+)", head.strip())
        assert m, head
        rows = []
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 4 or cells[0] in ("Option", "---"):
                continue
            rows.append(dict(flag=cells[0].strip("`"), value=cells[1], default=cells[2], help=cells[3]))
        out[m.group(1)] = (m.group(2), rows)
    return out


DOCS = _doc_tables()
COMMANDS = list(DOCS)


def _parser():
    top = argparse.ArgumentParser(prog="tmbrb")
    subs = top.add_subparsers(dest="command", metavar="COMMAND")
    an = cli.add_analyze_parser(subs)
    return top, subs, an


def _sub(name):
    _, _, an = _parser()
    (sp,) = [a for a in an._actions if isinstance(a, argparse._SubParsersAction)]
    return sp.choices[name]


def _kind(row):
    """(type, nargs, choices) that the doc's Value column describes."""
    v = row["value"]
    if v == "switch":
        return bool, 0, None
    if v.startswith("`"):
        return str, None, re.findall(r"`([^`]+)`", v)
    nargs = "+" if v.startswith("one or more ") else "*" if v.startswith("any number of ") else None
    base = v.split()[-1].rstrip("s") if nargs else v
    return {"text": str, "number": float, "integer": int}[base], nargs, None


def _default(row):
    typ, nargs, _ = _kind(row)
    d = row["default"]
    if d == "off":
        return False
    if d == "none":
        return None
    if d == "nothing":
        return []
    words = d.strip("`").split()
    vals = [typ(w) for w in words]
    return vals if nargs else vals[0]


def _sample(row):
    """A value of the option's kind on the command line, and what it parses to."""
    typ, nargs, choices = _kind(row)
    if typ is bool:
        return [], True
    if choices:
        return [choices[-1]], choices[-1]
    one = {str: ("c1", "c1"), float: ("0.25", 0.25), int: ("7", 7)}[typ]
    if nargs:
        two = {str: ("c2", "c2"), float: ("2", 2.0), int: ("8", 8)}[typ]
        return [one[0], two[0]], [one[1], two[1]]
    return [one[0]], one[1]


def _required_argv(rows):
    argv = []
    for r in rows:
        if r["default"] == "required":
            argv += [r["flag"], *_sample(r)[0]]
    return argv


def _dest(flag):
    return flag[2:].replace("-", "_")


def _parse(argv):
    top, _, _ = _parser()
    return top.parse_args(argv)


def test_the_doc_lists_every_subcommand_in_the_parsers_order():
    _, _, an = _parser()
    (sp,) = [a for a in an._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sp.choices) == COMMANDS
    # and the table of analyses at the top of docs/statistics.md, in its order
    top = DOC.read_text(encoding="utf-8").split("## Command-line options", 1)[0]
    assert re.findall(r"^\| `([a-z0-9-]+)` \| `", top, flags=re.M) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommand_has_the_options_of_its_table_in_order(name):
    flags = [a.option_strings for a in _sub(name)._actions]
    assert flags == [["-h", "--help"]] + [[r["flag"]] for r in DOCS[name][1]]


@pytest.mark.parametrize("name", COMMANDS)
def test_each_option_parses_to_its_documented_default(name):
    rows = DOCS[name][1]
    ns = vars(_parse(["analyze", name, *_required_argv(rows)]))
    assert ns.pop("command") == "analyze" and ns.pop("analysis") == name
    func = ns.pop("func")
    assert func.__module__ == cli.__name__ and func.__name__.startswith("_cmd_")
    expected = {_dest(r["flag"]): (_sample(r)[1] if r["default"] == "required" else _default(r)) for r in rows}
    assert ns == expected
    for r in rows:  # the type too: 10 is not 10.0 in a JSON, 2000 not "2000"
        if r["default"] not in ("required", "none", "nothing", "off"):
            assert type(_default(r)) is type(ns[_dest(r["flag"])])


@pytest.mark.parametrize("name", COMMANDS)
def test_each_option_takes_a_value_of_its_kind(name):
    rows = DOCS[name][1]
    base = _required_argv(rows)
    for r in rows:
        words, value = _sample(r)
        ns = _parse(["analyze", name, *base, r["flag"], *words])
        got = getattr(ns, _dest(r["flag"]))
        assert got == value and type(got) is type(value), r["flag"]


def _squeezed(text):
    return re.sub(r"\s+", "", text)


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        _parse(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_a_wrong_value_is_refused(name, capsys):
    rows = DOCS[name][1]
    base = _required_argv(rows)
    checked = 0
    for r in rows:
        typ, nargs, choices = _kind(r)
        if choices:
            for c in choices:  # each listed value is taken
                assert getattr(_parse(["analyze", name, *base, r["flag"], c]), _dest(r["flag"])) == c
            err = _refused(capsys, ["analyze", name, *base, r["flag"], "nope"])
            assert f"argument {r['flag']}: invalid choice: 'nope'" in err
        elif typ in (int, float):
            err = _refused(capsys, ["analyze", name, *base, r["flag"], "0.5x"])
            assert f"argument {r['flag']}: invalid {typ.__name__} value: '0.5x'" in err
            if typ is int:
                err = _refused(capsys, ["analyze", name, *base, r["flag"], "0.5"])
                assert f"argument {r['flag']}: invalid int value: '0.5'" in err
        elif typ is bool:
            err = _refused(capsys, ["analyze", name, *base, r["flag"], "yes"])
            assert "unrecognized arguments: yes" in err
        elif nargs == "+":
            err = _refused(capsys, ["analyze", name, *base, r["flag"]])
            assert f"argument {r['flag']}: expected at least one argument" in err
        else:
            continue
        checked += 1
    assert checked or name in ("compare-roc", "spearman")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_required_option_is_refused(name, capsys):
    rows = DOCS[name][1]
    required = [r for r in rows if r["default"] == "required"]
    assert required
    for r in required:
        argv = _required_argv([q for q in required if q is not r])
        err = _refused(capsys, ["analyze", name, *argv])
        assert re.search(r"the following arguments are required: .*" + re.escape(r["flag"]), err)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_help_is_the_documented_one(name, capsys):
    one_line, rows = DOCS[name]
    sp = _sub(name)
    assert sp.description == one_line
    helps = {a.option_strings[0]: a.help for a in sp._actions}
    assert helps.pop("-h") == "show this help message and exit"
    assert helps == {r["flag"]: r["help"] for r in rows}
    with pytest.raises(SystemExit) as e:
        _parse(["analyze", name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tmbrb analyze {name} [-h]")
    shown = _squeezed(out)  # argparse wraps lines, also at hyphens
    assert _squeezed(one_line) in shown
    for r in rows:  # each as the user sees it, after the option and its value's name
        assert _squeezed(r["help"]) in shown


@pytest.mark.parametrize("name", ["logistic", "cox", "cox-scan"])
def test_reference_levels_are_shown_as_column_equals_level(name, capsys):
    with pytest.raises(SystemExit):
        _parse(["analyze", name, "--help"])
    assert "--reference COLUMN=LEVEL [COLUMN=LEVEL ...]" in capsys.readouterr().out


def test_analyze_lists_its_subcommands_with_their_help_and_needs_one(capsys):
    text = " ".join(DOC.read_text(encoding="utf-8").split("## Command-line options", 1)[1].split("\n### ")[0].split())
    listed = re.search(r"`tmbrb --help` lists `analyze` as \*(.+?)\*;", text).group(1)
    description = re.search(r"`tmbrb analyze --help` says \*(.+?)\*", text).group(1)
    top, subs, an = _parser()
    (choice,) = [a for a in subs._choices_actions if a.dest == "analyze"]
    assert choice.help == listed
    assert an.description == description
    (sp,) = [a for a in an._actions if isinstance(a, argparse._SubParsersAction)]
    assert {a.dest: a.help for a in sp._choices_actions} == {n: DOCS[n][0] for n in COMMANDS}
    with pytest.raises(SystemExit) as e:
        top.parse_args(["analyze", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    shown = _squeezed(out)
    assert out.startswith("usage: tmbrb analyze [-h] ANALYSIS ...") and _squeezed(description) in shown
    for n in COMMANDS:
        assert _squeezed(f"{n} {DOCS[n][0]}") in shown
    err = _refused(capsys, ["analyze"])
    assert "the following arguments are required: ANALYSIS" in err
    with pytest.raises(SystemExit):
        top.parse_args(["--help"])
    assert _squeezed(listed) in _squeezed(capsys.readouterr().out)


def test_report_takes_no_csv_option(capsys):
    err = _refused(capsys, ["analyze", "report", "--predictions", "p.csv", "--csv", "x.csv"])
    assert "unrecognized arguments: --csv x.csv" in err


def test_help_texts_that_name_a_default_name_the_parsed_one():
    """A help text saying "(default: X)" says the value the option gets when it is left out."""
    for name in COMMANDS:
        sp, rows = _sub(name), DOCS[name][1]
        defaults = vars(_parse(["analyze", name, *_required_argv(rows)]))
        for a in sp._actions:
            m = re.search(r"default:? ([^,)\s]+)[,)]", a.help or "")
            if not m or not a.option_strings[0].startswith("--") or a.default is None:
                continue
            got = defaults[a.dest]
            if isinstance(got, list):
                continue
            shown = m.group(1)
            assert shown == (f"{got:g}" if isinstance(got, float) else str(got)), (name, a.option_strings)
