# meshmq — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MESHMQ := target/release/meshmq
TOPOLOGY ?= topologies/demo.toml
APT := apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends

.PHONY: run build test test-deps lint bench clean

## Build, then bring up the demo mesh on this machine (Ctrl-C stops it).
run: build
	$(MESHMQ) up $(TOPOLOGY)

build:
	$(CARGO) build --release

## Install what the tests need, check formatting and lints, run every test.
test: test-deps lint
	$(CARGO) test --profile ci -- --test-threads=2

## Tools the integration tests start for real (installed when missing).
test-deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
	@command -v promtool >/dev/null || { \
		echo "installing promtool (Debian's prometheus package) for the metrics test"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) prometheus || { $$SUDO apt-get update && $$SUDO $(APT) prometheus; }; \
	}
	@command -v python3 >/dev/null || $(APT) python3 python3-pip
	@python3 -c 'import stomp' 2>/dev/null || python3 -m pip install --quiet stomp.py \
		|| python3 -m pip install --quiet --break-system-packages stomp.py

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --profile ci --all-targets -- -D warnings

## Run the standard benchmark set and print a results table.
bench: build
	$(MESHMQ) bench suite

clean:
	$(CARGO) clean
	rm -rf data
