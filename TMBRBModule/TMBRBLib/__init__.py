"""TMBRB core library: CT + seed + box -> crop -> model -> score, CAM and risk.

Imports neither 3D Slicer nor Qt (only the MRML adapter module does, lazily), so the same
engine runs in Slicer, on the command line, in the browser viewer and in training.

Research use only: not a medical device.
"""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = "TMBRB is for research use only; it is not a medical device and must not guide patient care."
