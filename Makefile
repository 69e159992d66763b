# The two commands a user needs: `make run` and `make test`. Everything else is a helper.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
DATA_DIR ?= ./dumont-data
LISTEN ?= 127.0.0.1:8765
DEMO ?= true

.PHONY: all setup configure build test run clean format web

all: build

setup:
	@bash scripts/setup.sh

$(BUILD_DIR)/build.ninja:
	@bash scripts/setup.sh
	cmake -S . -B $(BUILD_DIR) -G Ninja

configure: setup $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600

run: build web
	$(BUILD_DIR)/bin/dumontd --data-dir $(DATA_DIR) --listen $(LISTEN) --set demo.enabled=$(DEMO)

# The web console: static files built with Vite into web/dist (Node is needed to build, not to run).
web: setup
	cd web && (test -d node_modules || npm ci --no-audit --no-fund --loglevel=error) && npm run --silent build -- --logLevel warn

clean:
	rm -rf $(BUILD_DIR)

format:
	find src app tests -name '*.cc' -o -name '*.h' | xargs clang-format -i

# Benchmarks (not part of `make test`): dumont vs restic on generated workspaces, see bench/README.md.
# BENCH_SIZES="0.5" for a quick run (default "2 7"); results in bench/results/snapshot.json. The snapshot
# bench has a local-directory leg and an S3 leg (Ceph RGW with a bluestore OSD on loopback, run when the
# Ceph packages are installed; SNAPSHOT_BENCH_S3=0 skips it, SNAPSHOT_BENCH_LOCAL=0 skips the local leg).
.PHONY: bench bench-snapshot bench-api
bench: bench-snapshot bench-multistart bench-api

bench-snapshot: build
	bash bench/snapshot_bench.sh

# Heartbeat ingestion: dumontd vs FastAPI+uvicorn, then 100k agents at 10k heartbeats/s on SQLite and
# PostgreSQL; results in bench/results/api.json (API_SCALE_S=300 for 5-minute scale runs).
bench-api: build
	bash bench/api_bench.sh

# Multi-start vs one-at-a-time deploys on a simulated marketplace (fake clock, ~5 s); see bench/README.md.
.PHONY: bench-multistart
bench-multistart: build
	$(BUILD_DIR)/bin/multistart_bench --deploys 5000 --seed 42 --out bench/results/multistart.json --readme bench/README.md
