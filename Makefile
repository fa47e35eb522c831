# ecluse — the two set-up commands are `make demo` and `make test`.
# Each installs what cargo cannot (cmake for pingora; test servers) when missing.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo test lint fmt schema bench deps check-configs build fuzz deb deb-tools test-tools

# System packages the build needs (pingora builds a C library with cmake).
deps:
	@scripts/need.sh cmake

build: deps
	$(CARGO) build --release --bin ecluse

## Run the simulated ENT and ecluse in front of it; prints the URLs to open.
## The `demo` profile (thin LTO, 16 codegen units): a first build from a clean clone should
## be shorter than `release`'s fat LTO (its link alone took 17 min on one core;
## docs/benchmarks.md); packages and benchmarks keep `release`. The binary is
## target/demo/ecluse. The build is not quiet: a first one takes minutes, and a newcomer
## should see it progress.
demo: deps
	$(CARGO) build --profile demo --bin ecluse
	target/demo/ecluse demo $(if $(SURGE),--surge)

## The Debian package (cargo-deb): target/debian/ecluse_<version>_<arch>.deb with the
## optimised binary, /etc/ecluse/ecluse.yaml, the systemd unit and logrotate.
deb: deps deb-tools
	$(CARGO) build --release --bin ecluse
	$(CARGO) deb --no-build
	@ls -1 target/debian/*.deb

# cargo-deb builds the package; installed from crates.io when missing.
deb-tools:
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) deb --version >/dev/null 2>&1 || { \
	  echo "ecluse: installing cargo-deb with cargo install (builds the Debian package)" >&2; \
	  $(CARGO) install cargo-deb --locked --version "~3.8"; }

# Node test tools, from npm into target/test-tools (never committed): axe-core, the
# accessibility engine the browser tests inject into every page ecluse writes.
AXE_CORE_VERSION ?= 4.14.1
test-tools:
	@scripts/need.sh npm
	@test -f target/test-tools/node_modules/axe-core/axe.min.js && \
	  grep -q '"version": "$(AXE_CORE_VERSION)"' target/test-tools/node_modules/axe-core/package.json || { \
	  echo "ecluse: installing axe-core $(AXE_CORE_VERSION) with npm (accessibility audit of the pages)" >&2; \
	  npm install --prefix target/test-tools --no-save --no-audit --no-fund axe-core@$(AXE_CORE_VERSION) >&2; }

## Everything CI checks: formatting, clippy, all tests, every file in config/.
test: deps deb-tools test-tools
	@# Tests start real servers and a real browser: Chromium, and Prometheus (the
	@# dashboard test scrapes a running demo; promtool checks the alert rules) and Redis
	@# (fleet mode: three nodes share state through it). The package test builds the
	@# .deb with cargo-deb and checks it with dpkg-deb, lintian, systemd-analyze and a
	@# real logrotate run. HAProxy stands in front of ecluse as the L4 load balancer
	@# speaking the PROXY protocol (tests/proxy_protocol.rs), and in front of a fleet
	@# with the shipped config/haproxy/ecluse-fleet.cfg (tests/fleet_lb.rs).
	@scripts/need.sh chromium chromedriver prometheus promtool redis-server lintian logrotate systemd-analyze dpkg-deb haproxy
	@echo "== cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "== cargo clippy --all-targets -- -D warnings"
	$(CARGO) clippy --all-targets -- -D warnings
	@echo "== cargo test (tests/doc_commands.rs runs the shell blocks of README.md and docs/operations.md)"
	$(CARGO) test --all-targets
	@$(MAKE) --no-print-directory check-configs

check-configs:
	@echo "== ecluse check config/*.yaml"
	$(CARGO) build --bin ecluse
	@# The reference policies read their ticket keys from the environment: check them
	@# with a throwaway key.
	@for f in config/*.yaml; do ECLUSE_TICKET_KEYS="check:$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" $(CARGO) run --quiet --bin ecluse -- check "$$f" || exit 1; done
	@# The packaged policy reads its secrets from /etc/ecluse: checked without them, as a
	@# config repository's CI would.
	$(CARGO) run --quiet --bin ecluse -- check --skip-secrets pkg/ecluse.yaml
	@echo "== haproxy -c config/haproxy/ecluse-fleet.cfg"
	@scripts/need.sh haproxy
	@$$(command -v haproxy || echo /usr/sbin/haproxy) -q -c -f config/haproxy/ecluse-fleet.cfg

## Formatting, clippy, and the supply chain (cargo deny: advisories, licences, duplicate
## versions, sources; cargo audit). Installs cargo-deny / cargo-audit when missing.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@echo "== supply chain: cargo deny + cargo audit"
	CARGO=$(CARGO) scripts/supply-chain.sh

## Fuzz every parser facing hostile input, FUZZ_SECONDS per target (default 60).
## Installs cargo-fuzz and the nightly toolchain when missing.
fuzz:
	scripts/fuzz.sh $(or $(FUZZ_SECONDS),60)

fmt:
	$(CARGO) fmt --all

## Regenerate the JSON Schema editors use for config/*.yaml.
schema:
	$(CARGO) run --quiet --bin ecluse -- schema > config/ecluse.schema.json

## Benchmarks (not timed tests): criterion benches and bench/proxy.sh against nginx.
bench: deps
	@scripts/need.sh nginx wrk taskset
	$(CARGO) bench
	bench/proxy.sh
