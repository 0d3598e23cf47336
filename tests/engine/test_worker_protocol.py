"""The engine worker's protocol (TMBRBLib.worker) without a process: malformed lines, refused requests, a request
cancelled before it starts, and shutdown. (The worker process behind the Slicer Logic: tests/slicer/test_worker.py.)"""

from __future__ import annotations

import io
import json

from TMBRBLib.worker import Worker


def test_requests_are_answered_by_id_and_bad_ones_do_not_stop_the_worker(tmp_path):
    def score(rid, **fields):
        return json.dumps(dict({"id": rid, "ct": str(tmp_path / "no-such-ct.nrrd"), "seed_lps": [0, 0, 0],
                                "out": str(tmp_path / rid)}, **fields))

    lines = [score("a"), "this is not JSON", score("b"), json.dumps({"op": "cancel", "id": "b"}),
             json.dumps({"id": "c", "seed_lps": [0, 0, 0]}), score("e", ecog=7), json.dumps({"op": "shutdown"}),
             score("d")]
    out = io.StringIO()
    worker = Worker(io.StringIO("\n".join(lines) + "\n"), out)
    worker._read()  # what the reader thread does, here before the cases are served: b is cancelled before it starts
    assert worker.serve() == 0
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    by_id = {}
    for a in answers:
        by_id.setdefault(a.get("id"), []).append(a)
    assert "could not read the request line" in by_id[None][0]["error"]  # the malformed line
    assert any(a.get("ready") for a in by_id[None])
    assert by_id["a"][-1]["kind"] == "input" and "does not exist" in by_id["a"][-1]["error"]
    assert by_id["b"] == [{"id": "b", "cancelled": True}]  # answered at once, never scored
    assert "lacks ct, out" in by_id["c"][-1]["error"] and by_id["c"][-1]["kind"] == "input"
    assert by_id["e"][-1]["kind"] == "input" and "ECOG" in by_id["e"][-1]["error"]
    assert "d" not in by_id  # after shutdown nothing is read
    assert list(tmp_path.iterdir()) == []  # nothing written for refused or cancelled requests
