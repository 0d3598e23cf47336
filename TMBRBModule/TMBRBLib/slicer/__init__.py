"""The MRML side of TMBRB: everything that needs 3D Slicer's scene (MRML) but no GUI toolkit (Qt, CTK).

- :mod:`.mrml`         volumes, markups, segmentations, tables and display nodes to and from the engine's images
- :mod:`.parameters`   the module's parameter node (Slicer's parameterNodeWrapper, or a stand-in outside Slicer)
- :mod:`.dependencies` the packages the engine needs, installed on first Apply (torch through the PyTorch extension)
- :mod:`.runner`       the engine in a background process (:class:`~.runner.EngineJob`), read line by line
- :mod:`.logic`        the module's Logic: inputs from the scene, scoring, output nodes, batch, the polling loop

It runs inside 3D Slicer, on the ``slicer-core`` wheel and in the browser viewer (trame-slicer). The rest of TMBRBLib
never imports this package; importing it does not import ``slicer`` (its modules do).
"""

from __future__ import annotations
