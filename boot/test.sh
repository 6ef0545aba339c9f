#!/usr/bin/env sh
# Install what the tests need into .venv and run the whole suite (arguments go to pytest).
set -eu
cd "$(dirname "$0")/.."
EXTRAS=dev
. boot/venv.sh
exec .venv/bin/python -m pytest "$@"
