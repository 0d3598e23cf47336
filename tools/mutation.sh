#!/usr/bin/env bash
# Mutation testing of the core library and training's trainer with mutmut 3 (docs/testing.md). Not part of CI.
#
#   tools/mutation.sh run 'TMBRBLib.regions*'          # mutate one module (mutmut's name globs), run, keep results
#   tools/mutation.sh --tests "tests/engine/test_risk.py tests/engine/test_values.py -m 'not slow'" run 'TMBRBLib.risk*'
#   tools/mutation.sh --only src/TMBRBLib/crop.py --tests "tests/engine/test_crop_values.py -m 'not slow'" run 'TMBRBLib.crop*'
#   tools/mutation.sh results                          # the surviving mutants; `show NAME` prints one as a diff
#
# --only narrows pyproject's only_mutate for the staged copy to the given (staged) paths, so a run generates only that
# module's mutants (minutes) instead of all 14,000 (11 minutes). --tests and --only may come in either order.
#
# mutmut names a mutant after its file's module path and drops only a leading "src/", so this stages a copy of the
# repository with TMBRBModule/ as src/ (TMBRBLib.regions, as the tests import it) in $TMBRB_MUTATION_DIR
# (default: $TMPDIR/tmbrb-mutation-<uid>) and runs mutmut there, niced. The copy's mutants/ folder keeps mutmut's
# results between runs. Without PYTHONPATH: mutmut puts its mutated copy first on the path.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${TMBRB_MUTATION_DIR:-${TMPDIR:-/tmp}/tmbrb-mutation-$(id -u)}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
TESTS=""
ONLY=""
while [ "${1:-}" = "--tests" ] || [ "${1:-}" = "--only" ]; do
  if [ "$1" = "--tests" ]; then TESTS=$2; else ONLY=$2; fi
  shift 2
done
stage() {
  mkdir -p "$WORK/src"
  rm -rf "$WORK/src/TMBRBLib" "$WORK/src/Resources" "$WORK/training" "$WORK/tests" "$WORK/docs"
  # -p keeps the files' times: mutmut generates mutants again only for files that changed
  cp -rp "$REPO/TMBRBModule/TMBRBLib" "$REPO/TMBRBModule/Resources" "$WORK/src/"
  # docs/ too: tests/stats/test_cli_options.py checks the parser against docs/statistics.md's option tables
  cp -rp "$REPO/training" "$REPO/tests" "$REPO/docs" "$WORK/"
  cp -p "$REPO/pyproject.toml" "$WORK/"
  find "$WORK/src" "$WORK/training" "$WORK/tests" -name __pycache__ -prune -exec rm -rf {} +
  # the fastest-first plugin, importable from the staged copy and from mutants/ (mutmut's working folder in a run)
  mkdir -p "$WORK/mutants"
  cp -p "$REPO/tools/mutmut_fastfirst.py" "$WORK/" && cp -p "$REPO/tools/mutmut_fastfirst.py" "$WORK/mutants/"
  "$PYTHON" -c 'import json, re, shlex, sys
path, tests, only = sys.argv[1], shlex.split(sys.argv[2]), shlex.split(sys.argv[3])
text = open(path).read()
if tests:
    line = "pytest_add_cli_args_test_selection = " + json.dumps(tests)
    text = re.sub(r"^pytest_add_cli_args_test_selection = .*$", lambda m: line, text, count=1, flags=re.M)
if only:
    line = "only_mutate = " + json.dumps(only)
    text = re.sub(r"^only_mutate = \[.*?\]$", lambda m: line, text, count=1, flags=re.M | re.S)
open(path, "w").write(text)
' "$WORK/pyproject.toml" "$TESTS" "$ONLY"
}
# `run` stages the working tree afresh; results/show/browse read the staged copy as it is
if [ "${1:-}" = "run" ] || [ ! -d "$WORK/src" ]; then stage; fi
cd "$WORK"
unset PYTHONPATH
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUTF8=1
export PYTEST_ADDOPTS="-p mutmut_fastfirst ${PYTEST_ADDOPTS:-}"  # a mutant's tests fastest first
exec nice -n 10 "$PYTHON" -m mutmut "$@"
