"""The documentation: README.md is the front door, docs/ the pages, built by MkDocs.

The site must build with `--strict`, where mkdocs.yml's `validation:` makes a page left out of
the nav, a link to a missing page and a link to a missing anchor errors; the README must start
with its two commands and link every page.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

# The README's first two commands: one starts the whole platform, one runs the tests.
COMMANDS = ("./boot/up.sh", "./boot/test.sh")


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """Run `mkdocs build --strict` on a config file, into `site`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(site),
        ],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pages() -> list[Path]:
    found = sorted(DOCS.glob("*.md"))
    assert found, "docs/ holds no pages"
    return found


def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"

    result = build(MKDOCS_YML, site)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    for page in pages():
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / name).is_file(), name


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    # The strictness lives in mkdocs.yml: a copy with one bad link must not build.
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(MKDOCS_YML, tmp_path / "mkdocs.yml")
    api = tmp_path / "docs" / "api.md"
    api.write_text(
        api.read_text(encoding="utf-8") + "\nSee [nowhere](jobs.md#no-such-heading).\n",
        encoding="utf-8",
    )

    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")

    assert result.returncode != 0
    assert "no-such-heading" in result.stdout + result.stderr


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()

    # The title, then at once the block of the two commands, before anything else.
    assert lines[0] == "# tripq"
    assert [line for line in lines[1:3] if line.strip()] == ["```sh"]
    block = lines[lines.index("```sh") + 1 :]
    block = block[: block.index("```")]
    assert [line.split()[0] for line in block] == list(COMMANDS)
    for command in COMMANDS:
        assert (ROOT / command).is_file(), command


def test_readme_links_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)\s]*)?\)", text))

    missing = [p.name for p in pages() if f"docs/{p.name}" not in linked]
    broken = [link for link in sorted(linked) if not (ROOT / link).is_file()]

    assert missing == []
    assert broken == []
