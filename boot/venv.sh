# Sourced by boot/up.sh and boot/test.sh: make .venv with tripq installed (EXTRAS="dev" for tests).
# Needs only Python 3.11+; reinstalls when pyproject.toml changes.
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "tripq needs Python 3.11 or newer as \$PYTHON (now: $PYTHON)" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.tripq-installed-${EXTRAS:-base}"
want="$(cat pyproject.toml | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing tripq${EXTRAS:+[$EXTRAS]} into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
    echo "$want" > "$stamp"
fi
