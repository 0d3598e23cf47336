"""`tmbrb viewer --demo`: the demo phantom opens with its seed and its annotator's box, as `tmbrb demo` scores it
(a seed alone takes the demo cohort's peritumoral haze as ground glass), and Apply gives an unflagged tumour mask.
Driven over the websocket as the page would, no browser needed."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from conftest import ARTIFACTS, ViewerServer, engine_env
from test_viewer_security import run_session


@pytest.fixture(scope="module")
def demo_server(viewer_bundle, tmp_path_factory):
    from conftest import require_browser_stack

    require_browser_stack()
    work = tmp_path_factory.mktemp("viewer-demo")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = ViewerServer(["--demo", "--device", "cpu", "--shifts", "0", "--out", str(work / "out")],
                          engine_env(viewer_bundle), work, ARTIFACTS / "server-demo.log", timeout_s=240)
    yield server
    server.stop()


def _apply_trigger(state):
    text = json.dumps(state)
    for pattern in (r"tmbrb-apply[^>]*?trigger\('(trigger__\d+)'", r"trigger\('(trigger__\d+)'[^>]*?tmbrb-apply"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    raise AssertionError("no Apply trigger in the page template")


def test_the_demo_opens_with_its_annotators_box_and_scores_without_a_mask_flag(demo_server):
    from TMBRBLib.phantom import make_demo_case

    async def steps(client, hello):
        opened = await client.state()
        await client.trigger(_apply_trigger(opened), "1")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            st = await client.state()
            if st.get("r_score") and not st.get("running"):
                return opened, st
            await asyncio.sleep(1.0)
        return opened, await client.state()

    opened, done = run_session(demo_server, steps)
    case = make_demo_case()
    sides = [abs(b - a) for a, b in zip(*case.box_lps)]
    assert "annotator" in opened["box_text"], opened["box_text"]
    shown = [float(v) for v in re.findall(r"(\d+) x (\d+) x (\d+)", opened["box_text"])[0]]
    assert shown == pytest.approx(sides, abs=1.0)  # the annotator's box, not a proposed one
    assert done.get("r_score"), done.get("message")
    assert done["r_mask"] and not done["r_mask_uncertain"], done["r_mask"]


def _button_trigger(state, element_id):
    """The trame trigger behind a button of the page template (found by the button's id)."""
    text = json.dumps(state)
    for pattern in (element_id + r"[^>]*?trigger\('(trigger__\d+)'", r"trigger\('(trigger__\d+)'[^>]*?" + element_id):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    raise AssertionError(f"no trigger for #{element_id} in the page template")


def test_the_panel_shows_the_values_of_the_saved_result_json(demo_server):
    """Issue 16: the side panel's score, OS/PFS groups and attention shares are those of result.json (written out
    here from result.json's numbers, not with the viewer's own formatter)."""

    async def steps(client, hello):
        st = await client.state()
        if not st.get("r_score"):  # the demo is not scored yet in this server (this test run alone)
            await client.trigger(_apply_trigger(st), "1")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (st.get("r_score") and not st.get("running")):
                await asyncio.sleep(1.0)
                st = await client.state()
        await client.trigger(_button_trigger(st, "tmbrb-save-results"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Saved result.json" not in (st.get("saved_text") or ""):
            await asyncio.sleep(0.5)
            st = await client.state()
        return st

    st = run_session(demo_server, steps)
    assert st.get("r_score"), st.get("message")
    assert "Saved result.json" in st["saved_text"], (st.get("saved_text"), st.get("message"))
    folder = st["saved_text"].rsplit(" in ", 1)[1].strip()
    with open(f"{folder}/result.json", encoding="utf-8") as f:
        result = json.load(f)
    score = f"{result['score']:.3f}"
    assert st["r_score"] == score
    for ep, shown in (("os", st["r_os"]), ("pfs", st["r_pfs"])):
        rule = result["risk"][ep]
        assert shown.startswith(f"{rule['group']} risk: TMBRB {score} "), (ep, shown, rule)
        assert f" {float(rule['cutoff']):g}" in shown, (ep, shown, rule)
    att = result["attention"]
    assert st["r_att"] == (f"tumour {100 * att['tumour']:.0f}%, ring ({att['ring_width_mm']:g} mm) "
                           f"{100 * att['ring']:.0f}%, elsewhere {100 * att['elsewhere']:.0f}%")
    assert st["r_demo"] is bool(result["model"].get("demo"))
