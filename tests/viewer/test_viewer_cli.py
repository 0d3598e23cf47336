"""The `viewer` subcommand without a browser: parser wiring, bad options, and that TMBRBLib never needs trame."""

from __future__ import annotations

import argparse
import subprocess
import sys

from conftest import REPO


def test_add_viewer_parser_registers_a_handler_with_defaults():
    from tmbrb_viewer.cli import add_viewer_parser, cmd_viewer

    p = argparse.ArgumentParser(prog="tmbrb")
    add_viewer_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["viewer", "--demo"])
    assert args.func is cmd_viewer and args.demo and args.port == 8080 and args.host == "127.0.0.1"


def test_bad_options_give_a_message_and_exit_code_2(tmp_path, capsys):
    from tmbrb_viewer.cli import main

    assert main(["--ct", str(tmp_path / "missing.nrrd")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--ct", str(tmp_path), "--demo"]) == 2
    assert "either --ct or --demo" in capsys.readouterr().err
    assert main(["--port", "70000"]) == 2
    assert "not a TCP port" in capsys.readouterr().err
    assert main(["--seed-ras", "1,2,3"]) == 2
    assert "give --ct too" in capsys.readouterr().err
    assert main(["--ct", str(tmp_path), "--seed-ras", "-1,2"]) == 2  # a negative first value is still the value
    assert "--seed-ras '-1,2' must be three finite numbers" in capsys.readouterr().err
    assert main(["--ct", str(tmp_path), "--seed-ras", "a,b,c"]) == 2
    assert "is not three numbers" in capsys.readouterr().err


def test_importing_tmbrblib_and_the_viewer_package_does_not_import_trame_or_slicer():
    code = ("import sys, TMBRBLib, tmbrb_viewer, tmbrb_viewer.cli; "
            "bad = [m for m in ('trame', 'trame_slicer', 'slicer', 'vtk') if m in sys.modules]; "
            "assert not bad, bad")
    env_path = f"{REPO / 'TMBRBModule'}:{REPO}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO / "docs"),
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
