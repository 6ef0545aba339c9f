# One-liners that mirror the README and docs/development.md.
.PHONY: run test lint bench
run:
	./boot/up.sh
test:
	./boot/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy .
bench:
	.venv/bin/tripq bench
