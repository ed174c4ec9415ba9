# tickflow: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# exchanges are unreachable from a dev box or CI: demos and tests use the simulator
export TICKFLOW_CONFIG ?= config/simulator.yaml

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

# the compiled batch engine (Rust, PyO3): rebuilt when its sources change; rustup's cargo
# may not be on a non-login shell's PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE_SRC := $(shell find jobs/native/src -name '*.rs') jobs/native/Cargo.toml jobs/native/Cargo.lock jobs/native/pyproject.toml jobs/native/tickflow_native.pyi
$(BIN)/.native: $(BIN)/.installed $(NATIVE_SRC)
	$(BIN)/pip install -q ./jobs/native
	touch $@

venv: $(BIN)/.installed $(BIN)/.native ## create .venv with the project, its tools and the compiled engine

run: venv ## stack + simulator + connector + Flink job, then a live view of the books
	$(BIN)/tickflow demo up
	$(BIN)/tickflow watch --seconds $${WATCH_SECONDS:-0}

stop: venv ## stop the demo processes and the local stack
	$(BIN)/tickflow demo down
	$(BIN)/tickflow stack down

test: venv ## the test suite (the compiled engine's Rust tests, the JVM module's tests, then unit + integration on the real local stack, with coverage)
	$(BIN)/tickflow demo yield
	cd jobs/native && cargo test --no-default-features -q
	cd jobs/jvm && mvn -q -B test
	$(BIN)/pytest --cov --cov-report=term --cov-report=xml --cov-fail-under=80 $(PYTEST_ARGS)

fuzz: ## the compiled core's fuzz campaign: FUZZ_EXECS (1,000,000) frames per exchange and envelopes, FUZZ_SEED (docs/robustness.md)
	cd jobs/native && nice -n 10 cargo run --release --no-default-features --example fuzz -- $${FUZZ_EXECS:-1000000} $${FUZZ_SEED:-20261205}

unit: venv ## unit tests only (no servers)
	$(BIN)/pytest -m unit -q

lint: venv ## ruff
	$(BIN)/ruff check .

types: venv ## mypy
	$(BIN)/mypy tickflow connectors jobs schemas simulator stack monitoring bench aws api

check: lint types test ## lint, types and tests

stack-up: venv ## start Kafka, Redis, ClickHouse, Flink, Prometheus and the schema registry on loopback
	$(BIN)/tickflow stack up

stack-status: venv ## each component, its port and whether it answers
	$(BIN)/tickflow stack status

.PHONY: help venv run stop test fuzz unit lint types check stack-up stack-status

soak: venv ## 60 s, every exchange x 10 symbols, faults on: connectors -> Kafka vs the send log
	$(BIN)/tickflow stack up kafka
	$(BIN)/python -m bench.soak --seconds $${SOAK_SECONDS:-60}

.PHONY: soak

verify: venv ## fresh faulted run, all exchanges: books = truth, versions, Kraken checksums
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.verify $(VERIFY_ARGS)

.PHONY: verify

backfill-day: venv ## a simulated day of >= 50 M frames into Kafka (once, ~75 min), then its batch backfill, timed
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.backfill_day generate --if-missing $(DAY_ARGS)
	$(BIN)/python -m bench.backfill_day run $(DAY_ARGS)

.PHONY: backfill-day

.PHONY: ha-drill
ha-drill: venv ## availability drill of the HA profile, Kafka's nodes on hosts of their own (root): a fault every ~2 min for 30 min (default stack down first)
	TICKFLOW_CONFIG=$(TICKFLOW_CONFIG):config/ha.yaml:config/netns.yaml $(BIN)/python -m bench.ha_drill $(HA_DRILL_ARGS)

chaos: venv ## failure drill: 12 kills (TaskManager, Python, JobManager, Kafka, ClickHouse, Redis) vs a fault-free run
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

.PHONY: chaos

dr-drill: venv ## disaster drill: wipe Flink state, Redis, ClickHouse; recover from Kafka + savepoint; RTO
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.dr_drill $(DR_ARGS)

.PHONY: dr-drill

bench: venv ## every benchmark, then bench/results/summary.json (targets vs measured) and report.html
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.serialization $(SERIALIZATION_ARGS)
	$(BIN)/python -m bench.redis_ops $(REDIS_ARGS)
	$(BIN)/python -m bench.kafka_ceiling $(CEILING_ARGS)
	$(BIN)/python -m bench.clickhouse_queries $(CLICKHOUSE_ARGS)
	$(BIN)/python -m bench.book_pipeline $(BENCH_ARGS)
	$(BIN)/python -m bench.backfill $(BACKFILL_ARGS)
	$(BIN)/python -m bench.summary

.PHONY: bench

offered-latency: venv ## latency at 20k/50k/100k frames/s offered by a paced producer, 5 min each (~25 min; a pool of frames is made once)
	$(BIN)/tickflow stack up
	$(BIN)/python -m bench.offered_latency $(OFFERED_ARGS)

.PHONY: offered-latency

deploy-check: venv ## validate docker/ and aws/ without Docker or AWS: compose config, hadolint, cfn-lint
	$(BIN)/python -m stack.validators
	$(BIN)/pytest -q tests/unit/test_deploy_artifacts.py

aws-zip: venv ## the AWS Managed Flink application zip (needs cargo, Maven, a JDK): dist/tickflow-aws.zip
	$(BIN)/python -m aws.package --output dist/tickflow-aws.zip

.PHONY: deploy-check aws-zip
