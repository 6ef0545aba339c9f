#!/usr/bin/env sh
# Set up tripq on a fresh machine and start all of it: Redis, workers, API on :8182. Ctrl-C stops.
set -eu
cd "$(dirname "$0")/.."
. boot/venv.sh
exec .venv/bin/tripq up "$@"
