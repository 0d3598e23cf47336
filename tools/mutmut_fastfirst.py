"""pytest plugin for mutmut runs (tools/mutation.sh loads it): a mutant's tests run fastest first, by the durations
mutmut recorded in mutmut-stats.json (the working folder is mutants/ during a run).

mutmut hands pytest a mutant's tests in no particular order, so a 19 s scoring test often ran before the 0.01 s value
test that kills the mutant. Only the order changes: the same tests run and give the same verdicts; a killed mutant
stops at its first failing test sooner (3-10 times cheaper in the io/batch/pipeline runs of stop 14).
"""
import json


def pytest_collection_modifyitems(session, config, items):
    try:
        with open("mutmut-stats.json") as f:
            d = json.load(f)["duration_by_test"]
    except Exception:
        return
    items.sort(key=lambda it: d.get(it.nodeid, 0.0))
