"""Files written whole or not at all, and files named by their sha256.

write_atomically(path, data)   a sibling temporary file (.<name>.tmp-XXXX), then a rename:
                               a reader sees the old file or the new one, never half of one
sha256_file(path)              the hex sha256 of a file, read in blocks
"""

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_BLOCK = 1 << 20
# mkstemp makes owner-only files; artifacts, CURRENT and outputs are read by other users (workers).
_MODE = 0o644

Writer = Callable[[Path], object]


def write_atomically(path: Path, data: bytes | str | Writer) -> None:
    """Write `data` (bytes, text, or a function that writes a given path) to `path` atomically."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as stream:
            if isinstance(data, str):
                stream.write(data.encode())
            elif isinstance(data, bytes):
                stream.write(data)
        if callable(data):
            data(tmp)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
