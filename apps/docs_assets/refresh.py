"""Replace the vendored Swagger UI and ReDoc files with the versions pinned here.

    .venv/bin/python -m apps.docs_assets.refresh   # needs npm; then tests/apps/test_docs_browser.py

Each package comes from the npm registry as its published tarball (`npm pack`, which checks it
against the registry's integrity hash); the files the pages use and their licences are copied
into static/<folder>/, and README.md, the record of what is vendored, is written anew with each
file's sha256.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
README = HERE / "README.md"


@dataclass(frozen=True, slots=True)
class Pin:
    """One npm package at one version, and the files of its tarball that tripq serves."""

    name: str
    version: str
    folder: str  # under static/
    files: tuple[str, ...]  # paths inside the tarball's package/ folder
    licence: str
    project: str  # its source repository on GitHub


PINS = (
    Pin(
        "swagger-ui-dist",
        "5.35.0",
        "swagger-ui",
        (
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "favicon-32x32.png",
            "swagger-ui-bundle.js.LICENSE.txt",
            "LICENSE",
            "NOTICE",
        ),
        "Apache-2.0",
        "swagger-api/swagger-ui",
    ),
    # ReDoc 3 ships an ES module that FastAPI's page, which loads the bundle as a classic
    # script, cannot run; 2.5 is the maintained line FastAPI's page is written for.
    Pin(
        "redoc",
        "2.5.4",
        "redoc",
        (
            "bundles/redoc.standalone.js",
            "bundles/redoc.standalone.js.LICENSE.txt",
            "LICENSE",
        ),
        "MIT",
        "Redocly/redoc",
    ),
)

# A row of README.md's table of files: | `static/<path>` | <source> | `<sha256>` |
_ROW = re.compile(r"^\| `static/(?P<path>[^`]+)` \| .* \| `(?P<sha256>[0-9a-f]{64})` \|$", re.M)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded_digests() -> dict[str, str]:
    """The sha256 README.md records for each vendored file, by its path under static/."""
    return {m["path"]: m["sha256"] for m in _ROW.finditer(README.read_text())}


def fetch(pin: Pin, into: Path) -> str:
    """Put `pin`'s files in `into`/<folder>/ from its npm tarball; return its integrity hash."""
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            ["npm", "pack", f"{pin.name}@{pin.version}", "--json", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            text=True,
        )
        meta = json.loads(packed.stdout)[0]
        folder = into / pin.folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with tarfile.open(Path(scratch) / meta["filename"]) as tarball:
            for name in pin.files:
                member = tarball.extractfile(f"package/{name}")
                if member is None:
                    raise ValueError(f"{pin.name}@{pin.version} has no file {name}")
                with member:
                    (folder / Path(name).name).write_bytes(member.read())
    integrity: str = meta["integrity"]
    return integrity


def write_readme(integrities: dict[str, str]) -> None:
    """Record what static/ holds: each package's version, source and licence, each file's sha256."""
    lines = [
        "# Swagger UI and ReDoc, vendored",
        "",
        "The assets of /docs and /redoc (see `__init__.py`), copied from the npm registry's",
        "tarballs by `python -m apps.docs_assets.refresh`, which writes this file: do not edit it.",
        "tests/apps/test_docs_browser.py checks each file against the sha256 below.",
        "",
        "ReDoc is pinned to the 2.x line, the one FastAPI's page is written for: ReDoc 3 ships an",
        "ES module that the page, loading it as a classic script, cannot run. ReDoc 2 points its",
        "sidebar logo at its maker's CDN; the pages' Content-Security-Policy keeps the browser",
        "from fetching it.",
        "",
        "| npm package | version | licence | project (GitHub) | tarball integrity (npm) |",
        "|---|---|---|---|---|",
    ]
    for pin in PINS:
        integrity = integrities[pin.name]
        lines.append(
            f"| {pin.name} | {pin.version} | {pin.licence} | {pin.project} | `{integrity}` |"
        )
    lines += ["", "| file | from | sha256 |", "|---|---|---|"]
    for pin in PINS:
        for name in pin.files:
            path = f"{pin.folder}/{Path(name).name}"
            source = f"{pin.name}@{pin.version} `package/{name}`"
            lines.append(f"| `static/{path}` | {source} | `{sha256_of(STATIC_DIR / path)}` |")
    README.write_text("\n".join(lines) + "\n")


def main() -> int:
    """Fetch every pin and rewrite README.md."""
    integrities = {pin.name: fetch(pin, STATIC_DIR) for pin in PINS}
    write_readme(integrities)
    return 0


if __name__ == "__main__":
    sys.exit(main())
