"""What the browser viewer may read and write on the server: the rules, without trame (unit-tested on their own).

- Uploads are written only under the viewer's own temporary folder, under names the server makes up
  (`upload_file_name`); the user's file name is kept for display only. Their total size is capped
  (`check_upload_size`).
- A path typed in the page opens only when the viewer was started with a data folder (`--data-dir`), and only when
  the resolved path (symlinks and `..` followed) lies inside it (`resolve_in_data_dir`). Every refusal reads the same
  ("not found or could not be read"), so the page cannot learn which server files exist.
- The websocket needs a random per-launch secret (`new_secret`, given in the URL the CLI prints) and, when the
  browser sends an Origin, the page's own origin (`origin_allowed`).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlsplit

from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.io import IMAGE_SUFFIXES

DEFAULT_MAX_UPLOAD_MB = 2048  # a chest CT is 50-600 MB as DICOM; 2 GiB leaves room for thin slices
NOT_FOUND_HINT = "Type a path relative to the viewer's data folder, or upload the CT."
NO_DATA_DIR_MESSAGE = ("Opening files on the server is turned off: the viewer was started without --data-dir. "
                       "Upload the CT (a file or a DICOM folder), or restart the viewer with --data-dir FOLDER.")


def not_found(typed: str) -> TMBRBInputError:
    """The one message for a typed path that cannot be opened, whatever the reason (absent, outside, unreadable)."""
    shown = typed if len(typed) <= 300 else typed[:300] + "..."
    return TMBRBInputError(f"File not found or could not be read: '{shown}'.", NOT_FOUND_HINT)


def resolve_in_data_dir(typed: str, data_dir: Optional[Path]) -> Path:
    """The server path a typed path names, when it lies inside `data_dir`.

    Parameters
    ----------
    typed : str
        What the user typed: relative to the data folder, or absolute.
    data_dir : Path or None
        The folder given with --data-dir; None when the viewer was started without one.

    Returns
    -------
    Path
        The resolved path (symlinks and `..` followed): an existing regular file or folder inside `data_dir`.

    Raises
    ------
    TMBRBInputError
        NO_DATA_DIR_MESSAGE without a data folder; otherwise `not_found(typed)` for a path that does not exist,
        lies outside the data folder (after resolving), is not a regular file or folder, or cannot be read.
    """
    if data_dir is None:
        raise TMBRBInputError(NO_DATA_DIR_MESSAGE)
    text = (typed or "").strip()
    if not text or "\x00" in text:
        raise not_found(text.replace("\x00", ""))
    root = Path(data_dir).resolve()
    try:
        target = (root / Path(text).expanduser()).resolve(strict=True)
        target.relative_to(root)
        regular = target.is_file() or target.is_dir()
    except (OSError, ValueError, RuntimeError):  # absent, a symlink loop, outside the data folder
        raise not_found(text) from None
    if not regular or not _readable(target):
        raise not_found(text)
    return target


def _readable(p: Path) -> bool:
    try:
        if p.is_dir():
            next(iter(p.iterdir()), None)
        else:
            with open(p, "rb") as f:
                f.read(1)
        return True
    except OSError:
        return False


def check_data_dir(data_dir: Optional[str]) -> Optional[str]:
    """A problem with --data-dir as a sentence, or None when it is usable (or not given)."""
    if data_dir is None:
        return None
    p = Path(data_dir)
    if not p.is_dir():
        return f"--data-dir '{data_dir}' is not a folder. Give the folder whose CTs the page may open."
    return None


def upload_suffix(name: str) -> str:
    """The image suffix of an uploaded file's name (the reader chooses by it), '' when it has none we read."""
    lower = (name or "").lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return ""


def upload_file_name(index: int, name: str) -> str:
    """The server's name for the index-th uploaded file: generated, keeping only a known image suffix.

    >>> upload_file_name(3, "../../etc/cron.d/x.nii.gz")
    'upload-00003.nii.gz'
    >>> upload_file_name(0, "IM0001")
    'upload-00000'
    """
    return f"upload-{index:05d}{upload_suffix(name)}"


def display_name(name: str, limit: int = 120) -> str:
    """The user's file name for messages: its last part only, printable, at most `limit` characters."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c if c.isprintable() else "?" for c in base) or "(no name)"
    return base if len(base) <= limit else base[:limit - 3] + "..."


def upload_size(files: Iterable[dict]) -> int:
    """Bytes of content in trame upload dicts (content a bytes object or a list of chunks)."""
    total = 0
    for f in files:
        content = (f or {}).get("content")
        if isinstance(content, (list, tuple)):
            total += sum(len(c) for c in content if c is not None)
        elif content is not None:
            total += len(content)
    return total


def check_upload_size(total_bytes: int, max_bytes: int) -> None:
    """Refuse an upload over the cap (TMBRBInputError naming both sizes and the option)."""
    if total_bytes > max_bytes:
        raise TMBRBInputError(
            f"The upload is {total_bytes / 2**20:.0f} MB; this viewer accepts at most {max_bytes / 2**20:.0f} MB.",
            "Upload a single CT series, or restart the viewer with a larger --max-upload-mb.")


def new_secret() -> str:
    """A random per-launch secret for the websocket (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def origin_allowed(origin: Optional[str], host: Optional[str]) -> bool:
    """Whether a websocket request's Origin matches the page it was served from (its Host header).

    A request without Origin (not a browser) passes: it still needs the secret. A browser page from another site
    sends its own Origin and is refused, secret or not.

    >>> origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080")
    True
    >>> origin_allowed("http://evil.example", "127.0.0.1:8080")
    False
    >>> origin_allowed("null", "127.0.0.1:8080")
    False
    """
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or not host:
        return False
    return parts.netloc.lower() == host.strip().lower()
