"""The training tests.

pytest imports this folder as the package ``training`` (tests/ has no __init__.py), which hides the real ``training``
package: ``training.cli`` and the like are then found only through an editable install's finder, i.e. in whichever
checkout that install points at, not necessarily this one. Putting this checkout's ``training`` folder on the
package's path makes ``training.<module>`` this checkout's module.
"""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[2] / "training"))  # noqa: F821 - the package's own __path__
