"""The browser viewer's file access, tried as an attacker would: the path policy alone (fast unit tests), then a real
viewer server driven by a raw websocket client (what any local process or web page could send, no browser needed).

Classes: the websocket secret and Origin; upload names used as paths; upload size; typed server paths (outside the
data folder, `..`, absolute, symlinks, pipes) and the one "not found" message whatever the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import re

import pytest

from conftest import ARTIFACTS, ViewerServer, engine_env

from TMBRBLib.errors import TMBRBInputError
from tmbrb_viewer import file_access as fa

# ---------------------------------------------------------------------------------------------------- the path policy


@pytest.fixture()
def data_tree(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    (data / "sub" / "ct.nrrd").write_bytes(b"x")
    (outside / "secret.nrrd").write_bytes(b"x")
    (data / "link_out.nrrd").symlink_to(outside / "secret.nrrd")
    (data / "link_dir").symlink_to(outside)
    os.mkfifo(data / "pipe.nrrd")
    return data, outside


def _refusal(typed, data):
    with pytest.raises(TMBRBInputError) as e:
        fa.resolve_in_data_dir(typed, data)
    return str(e.value)


def test_typed_paths_open_only_inside_the_data_folder(data_tree):
    data, outside = data_tree
    assert fa.resolve_in_data_dir("sub/ct.nrrd", data) == (data / "sub" / "ct.nrrd").resolve()
    assert fa.resolve_in_data_dir(str(data / "sub" / "ct.nrrd"), data) == (data / "sub" / "ct.nrrd").resolve()
    assert fa.resolve_in_data_dir("sub/../sub", data) == (data / "sub").resolve()
    attacks = ["../outside/secret.nrrd", str(outside / "secret.nrrd"), "link_out.nrrd", "link_dir/secret.nrrd",
               "sub/../../outside/secret.nrrd", "missing.nrrd", "pipe.nrrd", "/etc/passwd", "~/.ssh/id_rsa",
               "sub/ct.nrrd\x00.txt", "/proc/self/environ"]
    messages = {typed: _refusal(typed, data) for typed in attacks}
    # the same sentence whatever the reason: the page cannot tell an existing file from a missing one
    shapes = {m.replace(repr(t.replace("\x00", "")).strip("'\""), "<typed>") for t, m in messages.items()}
    assert len(shapes) == 1, messages
    assert "not found or could not be read" in next(iter(shapes))


def test_without_a_data_folder_no_typed_path_opens(data_tree):
    data, _outside = data_tree
    text = _refusal(str(data / "sub" / "ct.nrrd"), None)
    assert "without --data-dir" in text and "ct.nrrd" not in text


def test_upload_names_are_generated_and_keep_only_an_image_suffix():
    evil = ["/etc/cron.d/x", "../../x.nii.gz", "..\\..\\x.nrrd", "a/b/../../../c.mha", "", ".", "..", "x\x00.nrrd",
            "IM0001", "CON", "é" * 500 + ".nii"]
    names = [fa.upload_file_name(i, n) for i, n in enumerate(evil)]
    assert len(set(names)) == len(names)
    for n in names:
        assert re.fullmatch(r"upload-\d{5}(\.nrrd|\.nii|\.nii\.gz|\.mha)?", n), n
    assert fa.display_name("../../etc/notes.txt") == "notes.txt"
    assert fa.display_name("C:\\Users\\x\\notes.txt") == "notes.txt"
    assert len(fa.display_name("a" * 1000)) <= 120
    assert "\n" not in fa.display_name("a\nb.nrrd")


def test_upload_size_is_capped():
    files = [{"name": "a", "content": b"x" * 600}, {"name": "b", "content": [b"x" * 300, b"x" * 200]}]
    assert fa.upload_size(files) == 1100
    fa.check_upload_size(1100, 1100)
    with pytest.raises(TMBRBInputError, match="--max-upload-mb"):
        fa.check_upload_size(1101, 1100)


@pytest.mark.parametrize("origin, host, ok", [
    (None, "127.0.0.1:8080", True), ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("https://LOCALHOST:9", "localhost:9", True), ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
    ("http://evil.example", "127.0.0.1:8080", False), ("null", "127.0.0.1:8080", False),
    ("file://", "127.0.0.1:8080", False), ("http://127.0.0.1:8080.evil.example", "127.0.0.1:8080", False)])
def test_origin_must_be_the_page_itself(origin, host, ok):
    assert fa.origin_allowed(origin, host) is ok


def test_viewer_cli_refuses_a_bad_data_dir_and_upload_cap(tmp_path, capsys):
    from tmbrb_viewer.cli import main

    assert main(["--data-dir", str(tmp_path / "missing")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    for bad in ("0", "-1", "nan"):
        assert main(["--max-upload-mb", bad]) == 2
        assert "--max-upload-mb" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- a real server, a raw client


class WsClient:
    """A bare wslink client (msgpack, wslink's chunk headers): what any process on this computer can send."""

    def __init__(self, ws):
        from wslink.chunking import UnChunker

        self.ws, self.ids, self.unchunker = ws, itertools.count(1), UnChunker()
        self.unchunker.set_max_message_size(2**31)

    async def call(self, method, args=None, system=False):
        import aiohttp
        import msgpack
        from wslink.chunking import generate_chunks

        rid = f"{'system' if system else 'rpc'}:c0:{next(self.ids)}"
        msg = msgpack.packb({"wslink": "1.0", "id": rid, "method": method, "args": args or [], "kwargs": {}})
        for chunk in generate_chunks(msg, 4_000_000):
            await self.ws.send_bytes(chunk)
        while True:
            m = await asyncio.wait_for(self.ws.receive(), 120)
            if m.type != aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"the server closed the websocket: {m}")
            full = self.unchunker.process_chunk(m.data)
            if full is not None and full.get("id") == rid:
                return full

    async def state(self):
        return (await self.call("trame.state.get"))["result"]["state"]

    async def set_state(self, **values):
        await self.call("trame.state.update", [[{"key": k, "value": v} for k, v in values.items()]])

    async def trigger(self, name, *args):
        return await self.call("trame.trigger", [name, list(args), {}])


def run_session(server, steps, secret=None, origin=None):
    """Connect (optionally with an Origin), say hello with `secret`, run `steps(client, hello)`; returns its value."""
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as s:
            headers = {"Origin": origin} if origin else {}
            async with s.ws_connect(f"ws://127.0.0.1:{server.port}/ws", headers=headers, max_msg_size=0) as ws:
                client = WsClient(ws)
                hello = await client.call("wslink.hello", [{"secret": server.secret if secret is None else secret}],
                                          system=True)
                return await steps(client, hello)
    # in a thread of its own: Playwright's sync API (the browser tests of the same session) keeps an event loop
    # running in this thread, where asyncio.run refuses to start another
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def _template_trigger(state, pattern):
    text = json.dumps(state)
    found = re.search(pattern, text)
    assert found, f"no trigger matching {pattern!r} in the page template"
    return found.group(1)


async def _triggers(client):
    state = await client.state()
    return {"open": _template_trigger(state, r"tmbrb-open[^>]*trigger\('(trigger__\d+)'\)"),
            "chunk": _template_trigger(state, r"load_files_by_chunks\(.{0,80}?trigger_name: '(trigger__\d+)'")}


async def _upload(client, files):
    chunk = (await _triggers(client))["chunk"]
    await client.trigger(chunk, files)
    await client.trigger(chunk, [])  # the end of the upload
    return await client.state()


@pytest.fixture(scope="module")
def secured_server(viewer_bundle, tmp_path_factory):
    from conftest import require_browser_stack

    require_browser_stack()
    work = tmp_path_factory.mktemp("viewer-secure")
    (work / "data").mkdir()
    (work / "outside").mkdir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = ViewerServer(["--device", "cpu", "--out", str(work / "out"), "--data-dir", str(work / "data"),
                           "--max-upload-mb", "1"], engine_env(viewer_bundle), work, ARTIFACTS / "server-secure.log")
    server.work = work
    yield server
    server.stop()


def test_websocket_needs_the_printed_secret(secured_server):
    async def steps(client, hello):
        return hello, await client.call("trame.state.get")

    hello, reply = run_session(secured_server, steps, secret="wslink-secret")  # the framework's public default
    assert hello["error"]["message"] == "Authentication failed"
    assert "error" in reply and "result" not in reply
    hello, reply = run_session(secured_server, steps, secret=secured_server.secret[:-1])
    assert "error" in hello and "error" in reply
    hello, reply = run_session(secured_server, steps)
    assert "clientID" in hello["result"] and "state" in reply["result"]


def test_websocket_from_another_origin_is_refused(secured_server):
    import aiohttp

    async def steps(client, hello):
        return hello

    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        run_session(secured_server, steps, origin="http://evil.example")
    assert e.value.status == 403
    own = f"http://127.0.0.1:{secured_server.port}"
    assert "clientID" in run_session(secured_server, steps, origin=own)["result"]


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A small CT-like NRRD (air and a soft-tissue block, in HU) under the test server's 1 MB upload cap."""
    import numpy as np
    import SimpleITK as sitk

    a = np.full((24, 48, 48), -1000, np.int16)
    a[6:18, 12:36, 12:36] = 40
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.0, 1.0, 2.0))
    path = tmp_path_factory.mktemp("small-ct") / "small_ct.nrrd"
    sitk.WriteImage(img, str(path), useCompression=True)
    assert path.stat().st_size < 2**20
    return path


def test_upload_names_are_never_paths_and_messages_name_the_users_file(secured_server, small_ct):
    work = secured_server.work
    targets = [work / "outside" / "pwned.txt", work / "outside" / "pwned2.nrrd"]
    notes = [{"name": str(targets[0]), "size": 17, "content": b"this is not a CT\n"}]
    up = "../" * 12 + str(targets[1]).lstrip("/")
    ct_bytes = small_ct.read_bytes()
    phantom = [{"name": up, "size": len(ct_bytes), "content": ct_bytes}]

    async def steps(client, hello):
        return await _upload(client, notes), await _upload(client, phantom)

    after_notes, after_ct = run_session(secured_server, steps)
    assert not any(t.exists() for t in targets), "an upload's name was used as a server path"
    message = after_notes["message"]
    assert "Could not read the CT 'pwned.txt'" in message, message
    assert "tmbrb-viewer-" not in message and "upload-" not in message and str(work) not in message
    assert message.rstrip().endswith(".")  # the whole message, not cut off
    assert after_ct["has_ct"] and after_ct["ct_name"].startswith("pwned2.nrrd:"), (after_ct["ct_name"], after_ct["message"])


def test_upload_over_the_cap_is_refused_before_it_is_kept(secured_server):
    big = [{"name": f"IM{i:04d}", "size": 400_000, "content": b"\0" * 400_000} for i in range(3)]  # 1.2 MB > 1 MB

    async def steps(client, hello):
        await client.set_state(message="")
        chunk = (await _triggers(client))["chunk"]
        for f in big:  # one chunk each, as the page sends them
            await client.trigger(chunk, [f])
        mid = await client.state()
        await client.trigger(chunk, [])
        return mid, await client.state()

    mid, end = run_session(secured_server, steps)
    assert "accepts at most 1 MB" in mid["message"], mid["message"]
    assert not end["has_ct"] or "uploaded DICOM" not in end["ct_name"]


def test_the_rest_of_a_refused_upload_is_dropped_not_opened(secured_server, small_ct):
    """After the cap refuses an upload, the chunks the browser still sends are not gathered into a new upload."""
    big = [{"name": f"IM{i:04d}", "size": 600_000, "content": b"\0" * 600_000} for i in range(2)]  # 1.2 MB > 1 MB
    ct_bytes = small_ct.read_bytes()
    tail = [{"name": "tail.nrrd", "size": len(ct_bytes), "content": ct_bytes}]  # under the cap on its own

    async def steps(client, hello):
        await client.set_state(message="", has_ct=False)
        chunk = (await _triggers(client))["chunk"]
        for f in big + tail:
            await client.trigger(chunk, [f])
        await client.trigger(chunk, [])  # the end of the refused upload
        refused = await client.state()
        after = await _upload(client, tail)  # the next upload works
        return refused, after

    refused, after = run_session(secured_server, steps)
    assert "accepts at most 1 MB" in refused["message"], refused["message"]
    assert not refused["has_ct"], "part of a refused upload was opened as a CT"
    assert after["has_ct"] and after["ct_name"].startswith("tail.nrrd:"), (after["ct_name"], after["message"])


def _detached_header(folder, name, data_file):
    path = folder / name
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 48 48 24\nspacings: 1 1 2\nencoding: raw\n"
                    f"endian: little\ndata file: {data_file}\n\n")
    return path


def test_a_header_cannot_name_a_data_file_outside_the_allowed_folders(secured_server):
    """A detached NRRD header (uploaded, or typed inside --data-dir) whose data file lies elsewhere is not read."""
    import numpy as np

    work = secured_server.work
    secret = work / "outside" / "private.raw"
    a = np.full((24, 48, 48), -700, np.int16)
    a[6:18, 12:36, 12:36] = 40
    secret.write_bytes(a.tobytes())
    _detached_header(work / "data", "escape.nhdr", "../outside/private.raw")
    _detached_header(work / "data", "absolute.nhdr", str(secret))
    upload = _detached_header(work, "up.nhdr", str(secret)).read_bytes()

    async def steps(client, hello):
        open_ = (await _triggers(client))["open"]
        seen = {}
        for t in ("escape.nhdr", "absolute.nhdr"):
            await client.set_state(ct_path_input=t, message="", has_ct=False)
            await client.trigger(open_)
            seen[t] = await client.state()
        await client.set_state(message="", has_ct=False)
        seen["upload"] = await _upload(client, [{"name": "up.nhdr", "size": len(upload), "content": upload}])
        return seen

    seen = run_session(secured_server, steps)
    for key, st in seen.items():
        assert not st["has_ct"], f"{key}: a file outside the allowed folders was read as the CT"
        assert "outside its folder" in st["message"], (key, st["message"])


def test_typed_paths_open_only_inside_the_data_folder_over_the_websocket(secured_server, small_ct):
    work = secured_server.work
    inside, outside = work / "data" / "case1.nrrd", work / "outside" / "other.nrrd"
    for p in (inside, outside):
        p.write_bytes(small_ct.read_bytes())
    link = work / "data" / "link.nrrd"
    if not link.exists():
        link.symlink_to(outside)
    typed = ["../outside/other.nrrd", str(outside), "link.nrrd", "missing.nrrd", "/etc/passwd"]

    async def steps(client, hello):
        open_ = (await _triggers(client))["open"]
        seen = {}
        for t in typed + ["case1.nrrd"]:
            await client.set_state(ct_path_input=t, message="", has_ct=False)
            await client.trigger(open_)
            st = await client.state()
            seen[t] = (st["message"], st["has_ct"], st["ct_name"])
        return seen

    seen = run_session(secured_server, steps)
    for t in typed:
        message, has_ct, _ = seen[t]
        assert not has_ct, t
        assert message.replace(t, "<typed>").startswith("File not found or could not be read: '<typed>'."), message
    assert len({seen[t][0].replace(t, "<typed>") for t in typed}) == 1
    assert seen["case1.nrrd"][1] and seen["case1.nrrd"][2].startswith("case1.nrrd:")
