"""TMBRB in the browser: a local web app (trame-slicer) on the 3D Slicer module's Logic and MRML nodes.

``tmbrb viewer [--ct CT] [--demo] [--port 8080]`` or ``python -m tmbrb_viewer``. Serves on 127.0.0.1 unless
``--host`` asks for another address. trame, trame-slicer and slicer-core are imported only when the viewer starts
(``tmbrb_viewer.app``), so ``import TMBRBLib`` and ``import tmbrb_viewer`` never need them.

Research use only: not a medical device.
"""

from __future__ import annotations

REQUIRED_PACKAGES = ("trame", "trame_slicer", "slicer")
INSTALL_HINT = 'Install the browser viewer\'s packages: pip install "trame-slicer[standalone]>=2.0,<3"'


def missing_packages():
    """Names of the Python packages the viewer needs that cannot be imported (without importing them)."""
    import importlib.util

    missing = []
    for name in REQUIRED_PACKAGES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


__all__ = ["INSTALL_HINT", "REQUIRED_PACKAGES", "missing_packages"]
