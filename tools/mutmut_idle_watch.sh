#!/usr/bin/env bash
# Bound mutmut workers that sleep: a mutant whose test hangs asleep (a lock held across mutmut's fork, e.g. tqdm's
# after a failing batch test) never reaches mutmut's CPU-time limit. This sends SIGXCPU, which mutmut records as a
# timeout, to a worker of a mutmut run in a folder under PREFIX that used no CPU for IDLE_S seconds or ran longer
# than MAX_S. A timeout is not a kill by itself: run the mutant's tests in a plain pytest process
# (MUTANT_UNDER_TEST=<name> PYTHONPATH=src python -m pytest ... in the run's mutants/ folder) and count it killed
# only if a test fails there (docs/mutation-results.md, Stop 16).
#
#   tools/mutmut_idle_watch.sh /tmp/mut-mine- >> /tmp/mut-mine-watch.log &     # stop it with kill <its pid>
set -u
PREFIX=${1:?usage: mutmut_idle_watch.sh PREFIX-OF-THE-MUTATION-DIRS [IDLE_S] [MAX_S]}
IDLE_S=${2:-30}
MAX_S=${3:-900}
declare -A last_cpu last_change
while true; do
  now=$(date +%s)
  for p in $(pgrep -u "$(id -u)" -f -- "-m mutmut run"); do
    cwd=$(readlink "/proc/$p/cwd" 2>/dev/null) || continue
    case "$cwd" in "$PREFIX"*) ;; *) continue ;; esac
    for c in $(pgrep -P "$p"); do
      et=$(ps -o etimes= -p "$c" 2>/dev/null | tr -d ' ')
      [ -z "$et" ] && continue
      cpu=$(awk '{print $14+$15+$16+$17}' "/proc/$c/stat" 2>/dev/null)
      if [ "${last_cpu[$c]:-x}" != "$cpu" ]; then last_cpu[$c]=$cpu; last_change[$c]=$now; fi
      idle=$((now - ${last_change[$c]:-$now}))
      if [ "$et" -gt "$MAX_S" ] || [ "$idle" -gt "$IDLE_S" ]; then
        echo "$(date -u +%T) SIGXCPU to $c ($(tr '\0' ' ' < "/proc/$c/cmdline" 2>/dev/null | sed 's/ *$//')):" \
             "${et} s wall, no CPU for ${idle} s"
        kill -XCPU "$c"
      fi
    done
  done
  sleep 10
done
