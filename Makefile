# The project's commands. `make run` and `make test` need only cargo.

CARGO ?= cargo
BUF ?= $(shell command -v buf 2>/dev/null || echo "npx --yes @bufbuild/buf")

.PHONY: run build test lint bench

## Build and start identity, account, ledger and gateway on SQLite under ./var/.
run: build
	@./deploy/run-local.sh

build:
	$(CARGO) build --workspace --bins

## The whole suite. PostgreSQL variants run when BANK_TEST_POSTGRES_URL is set.
test:
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast --failure-output final; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## Formatting, clippy with warnings as errors, protobuf lint.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd proto && $(BUF) lint

bench:
	@./bench/run.sh
