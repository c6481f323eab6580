# meshmq — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MESHMQ := target/release/meshmq
TOPOLOGY ?= topologies/demo.toml
APT := apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends

.PHONY: run build test test-deps lint fuzz bench clean zk zk-stop

## Build, then bring up the demo mesh on this machine (Ctrl-C stops it).
run: build
	$(MESHMQ) up $(TOPOLOGY)

build:
	$(CARGO) build --release

## Install what the tests need, check formatting and lints, fuzz each decoder for a bounded
## time, run every test. `make test FUZZ=0` skips the fuzz build and run (the corpus is still
## replayed by `tests/it/fuzz_corpus_replays.rs`).
test: test-deps lint $(if $(filter 0,$(FUZZ)),,fuzz)
	$(CARGO) test --profile ci --no-fail-fast -- --test-threads=2

## Coverage-guided fuzzing on stable Rust: libFuzzer (the libfuzzer-sys crate) over code built
## with LLVM's SanitizerCoverage passes, as cargo-fuzz does without a sanitizer. Each target
## runs FUZZ_SECONDS from its committed corpus (fuzz/corpus/TARGET, left untouched; what it
## finds goes to fuzz/target/run/TARGET) and fails on the first crash, its input saved under
## fuzz/target/artifacts/TARGET/. Keep a crash as a regression: copy it into fuzz/corpus/TARGET.
FUZZ_TARGETS := wire stomp mqtt journal replication
FUZZ_SECONDS ?= 20
FUZZ_HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
	--cfg fuzzing
fuzz:
	@command -v c++ >/dev/null || $(APT) g++ || { apt-get update && $(APT) g++; }
	@start=$$(date +%s); \
	cd fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release --target $(FUZZ_HOST) --bins \
		&& echo "fuzz build: $$(( $$(date +%s) - start )) s"
	@$(MAKE) --no-print-directory -j$(FUZZ_JOBS) $(addprefix fuzz-run-,$(FUZZ_TARGETS))

## One fuzz target for FUZZ_SECONDS (`make fuzz` runs FUZZ_JOBS of them at once, one per core:
## libFuzzer uses one).
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
fuzz-run-%:
	@t=$*; mkdir -p fuzz/target/run/$$t fuzz/target/artifacts/$$t; \
	fuzz/target/$(FUZZ_HOST)/release/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-print_final_stats=1 -artifact_prefix=fuzz/target/artifacts/$$t/ \
		fuzz/target/run/$$t fuzz/corpus/$$t > fuzz/target/run/$$t.log 2>&1 \
		|| { tail -n 60 fuzz/target/run/$$t.log; echo "fuzz target $$t failed: input in fuzz/target/artifacts/$$t/"; exit 1; }; \
	printf 'fuzzed %s for %s s: %s\n' $$t $(FUZZ_SECONDS) "$$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' fuzz/target/run/$$t.log | tr -s ' \n' ' ')"

## Tools the integration tests start for real (installed when missing).
test-deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
	@{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || { \
		echo "installing prometheus and promtool (Debian's prometheus package) for the metrics tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) prometheus || { $$SUDO apt-get update && $$SUDO $(APT) prometheus; }; \
	}
	@{ [ -e /usr/share/java/zookeeper.jar ] && command -v java >/dev/null; } || { \
		echo "installing zookeeper (Debian's package, with its JRE) for the HA tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) zookeeper || { $$SUDO apt-get update && $$SUDO $(APT) zookeeper; }; \
	}
	@command -v python3 >/dev/null || $(APT) python3 python3-pip
	@python3 -c 'import stomp' 2>/dev/null || python3 -m pip install --quiet stomp.py \
		|| python3 -m pip install --quiet --break-system-packages stomp.py
	@python3 -c 'import paho.mqtt' 2>/dev/null || python3 -m pip install --quiet paho-mqtt \
		|| python3 -m pip install --quiet --break-system-packages paho-mqtt
	@command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || { \
		echo "installing mosquitto-clients (mosquitto_pub, mosquitto_sub) for the MQTT tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) mosquitto-clients || { $$SUDO apt-get update && $$SUDO $(APT) mosquitto-clients; }; \
	}
	@command -v fusermount3 >/dev/null || { \
		echo "installing fuse3 (fusermount3) for the power-loss filesystem of the durability tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) fuse3 || { $$SUDO apt-get update && $$SUDO $(APT) fuse3; }; \
	}
	@command -v iptables >/dev/null || { \
		echo "installing iptables for the partition tests (rules on loopback addresses)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) iptables || { $$SUDO apt-get update && $$SUDO $(APT) iptables; }; \
	}
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { \
		echo "installing chromium and chromium-driver (Debian's) for the mesh view's browser test"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) chromium chromium-driver || { $$SUDO apt-get update && $$SUDO $(APT) chromium chromium-driver; }; \
	}
	@python3 -c 'import selenium' 2>/dev/null || python3 -m pip install --quiet selenium \
		|| python3 -m pip install --quiet --break-system-packages selenium
	@command -v npm >/dev/null || { \
		echo "installing npm (Debian's) for mqtt.js, which the browser MQTT test loads"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) npm || { $$SUDO apt-get update && $$SUDO $(APT) npm; }; \
	}
	@[ -f tests/ws_browser/node_modules/mqtt/dist/mqtt.min.js ] || { \
		echo "installing mqtt.js (npm's mqtt) beside the browser test page"; \
		npm install --prefix tests/ws_browser --no-save --no-package-lock --no-audit --no-fund mqtt@5.16.0; \
	}
	@command -v mount >/dev/null && command -v umount >/dev/null || { \
		echo "installing mount (util-linux) for the full-disk test's tmpfs"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO $(APT) mount || { $$SUDO apt-get update && $$SUDO $(APT) mount; }; \
	}

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --profile ci --all-targets -- -D warnings

## Run the standard benchmark set and print a results table.
bench: build
	$(MESHMQ) bench suite

## A three-server ZooKeeper ensemble on 127.0.0.1:2181-2183 for topologies/ha-zk.toml
## (data and logs in data/zk; `make zk-stop` stops it).
ZK_CP := /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
zk:
	@test -f /usr/share/java/zookeeper.jar || $(MAKE) test-deps
	@for i in 1 2 3; do \
		d=$$PWD/data/zk/$$i; mkdir -p $$d; echo $$i > $$d/myid; \
		printf '%s\n' tickTime=500 initLimit=10 syncLimit=5 dataDir=$$d clientPort=218$$i \
			clientPortAddress=127.0.0.1 maxClientCnxns=0 admin.enableServer=false \
			4lw.commands.whitelist=srvr,mntr \
			server.1=127.0.0.1:2891:3891 server.2=127.0.0.1:2892:3892 \
			server.3=127.0.0.1:2893:3893 > $$d/zoo.cfg; \
		setsid java -Xmx256m -cp $(ZK_CP) org.apache.zookeeper.server.quorum.QuorumPeerMain \
			$$d/zoo.cfg > $$d/zookeeper.log 2>&1 < /dev/null & echo $$! > $$d/pid; \
	done
	@echo "ZooKeeper starting on 127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183 (logs in data/zk)"

zk-stop:
	@for i in 1 2 3; do test -f data/zk/$$i/pid && kill $$(cat data/zk/$$i/pid) 2>/dev/null; rm -f data/zk/$$i/pid; done; true

clean:
	$(CARGO) clean
	rm -rf data
