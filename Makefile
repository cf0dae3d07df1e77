# The project's commands. `make run` and `make test` need only cargo.

CARGO ?= cargo
BUF ?= $(shell command -v buf 2>/dev/null || echo "npx --yes @bufbuild/buf")

.PHONY: run build test test-faults lint bench

## Build and start identity, account, ledger and gateway on SQLite under ./var/.
run: build
	@./deploy/run-local.sh

build:
	$(CARGO) build --workspace --bins

## The whole suite. PostgreSQL variants run when BANK_TEST_POSTGRES_URL is set.
# The PostgreSQL variants (`::postgres`, `_on_postgresql`) and the Redis ones
# (`_with_redis`) are #[ignore]d, so a run without their variable reports them
# as skipped; with a variable set, its variants run (and fail if the server
# cannot be reached).
NEXTEST_UNSET = $(strip $(if $(BANK_TEST_POSTGRES_URL),,test(/::postgres$$/) | test(/_on_postgresql$$/)) \
	$(if $(BANK_TEST_REDIS_URL),,$(if $(BANK_TEST_POSTGRES_URL),,|) test(/_with_redis$$/)))
NEXTEST_SELECTION = $(if $(BANK_TEST_POSTGRES_URL)$(BANK_TEST_REDIS_URL),--run-ignored all $(if $(NEXTEST_UNSET),-E 'not ($(NEXTEST_UNSET))'),)
CARGO_TEST_SELECTION = $(if $(BANK_TEST_POSTGRES_URL)$(BANK_TEST_REDIS_URL),--include-ignored \
	$(if $(BANK_TEST_POSTGRES_URL),,--skip ::postgres --skip _on_postgresql) \
	$(if $(BANK_TEST_REDIS_URL),,--skip _with_redis),)

test:
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast --failure-output final $(NEXTEST_SELECTION); \
	else \
		$(CARGO) test --workspace --no-fail-fast -- $(CARGO_TEST_SELECTION); \
	fi

## The fault suite: the built binaries killed, restarted and cut off from
## PostgreSQL (a private cluster made with the machine's initdb) and Redis under
## load, and clients hanging up mid-request. BANK_FAULTS_SHORT=1 for CI's short
## version.
test-faults:
	$(CARGO) build --workspace --bins
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run -p bank-e2e --features faults --test faults --no-fail-fast --failure-output final --test-threads 1 && \
		$(CARGO) nextest run -p bank-gateway --no-fail-fast --failure-output final $(if $(BANK_TEST_POSTGRES_URL),--run-ignored all) -E 'test(/aborts::|deadline_travels/)'; \
	else \
		$(CARGO) test -p bank-e2e --features faults --test faults --no-fail-fast -- --test-threads 1 && \
		$(CARGO) test -p bank-gateway --test api --no-fail-fast -- $(if $(BANK_TEST_POSTGRES_URL),--include-ignored) aborts:: deadline_travels; \
	fi

## Formatting, clippy with warnings as errors, protobuf lint.
# cargo deny's advisories check needs the RustSec database; it runs only where
# the database is already on disk (cargo deny fetches it into ~/.cargo/advisory-dbs).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	cd proto && $(BUF) lint
	@if $(CARGO) deny --version >/dev/null 2>&1; then \
		$(CARGO) deny --log-level error check bans licenses sources && \
		if ls -d $${CARGO_HOME:-$$HOME/.cargo}/advisory-dbs/*/ >/dev/null 2>&1; then \
			$(CARGO) deny --log-level error check --disable-fetch advisories; \
		else \
			echo "cargo deny advisories: skipped, no RustSec database on this machine"; \
		fi; \
	else \
		echo "cargo deny: skipped, not installed (cargo install --locked cargo-deny)"; \
	fi

bench:
	@./bench/run.sh
