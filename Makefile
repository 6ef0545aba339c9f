# One-liners that mirror the README.
.PHONY: run test lint
run:
	./boot/up.sh
test:
	./boot/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy .
