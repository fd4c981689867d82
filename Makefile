# One command per habit. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-faults test-rabbitmq test-unit lint format bench bench-faults bench-quality compose-check schema clean

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on this machine 2.13.0 is a local CPU build (a looser spec
	# could pull a multi-GB CUDA build); the lock below is then satisfied without it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	# celery-batches 0.11 declares celery<5.7 but runs on 5.7 (our tests exercise it):
	# installed without its dependencies so that pip keeps the locked celery.
	$(BIN)/pip install -q --no-deps celery-batches==0.11
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jobfit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The same integration tests with RabbitMQ as the broker (its own vhost; results on Redis).
RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672
# The demo and training tests isolate their own workers with Redis key prefixes: not here.
RABBITMQ_TESTS ?= tests/integration/test_pipeline.py tests/integration/test_bad_input.py \
  tests/integration/test_concurrency.py tests/integration/test_health.py
test-rabbitmq: $(STAMP)
	JOBFIT_TEST_BROKER=$(RABBITMQ_URL) $(BIN)/python -m pytest -q $(RABBITMQ_TESTS)

# The fault suite alone (part of `make test` too): kill -9 workers, Redis and Postgres
# outages on private instances, a killed retrain, 10,000 hostile messages (~8 min).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults tests/faults

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p jobfit

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Raw encode vs the pipeline, latency, RSS, 1 vs 2 workers (MiniLM and mpnet, on every
# document of the real dataset when it is there, else on the sample), then the torch / ONNX /
# int8 backends on the check set. ~20 min on 2 cores.
DATASET ?= ../shared/data/resume-job/resume_data.csv
bench: $(STAMP)
	$(BIN)/jobfit bench $(if $(wildcard $(DATASET)),--dataset $(DATASET)) --out bench-pipeline.json

# The fault report (JSON): sent, scored, lost, duplicated, crashed for every scenario.
bench-faults: $(STAMP)
	$(BIN)/jobfit bench-faults --out bench-faults.json

# Untuned vs fine-tuned ranking quality on held-out resumes and jobs (real data, MiniLM head
# on CPU, ~2 min). On a GPU: QUALITY_ARGS="--models mpnet --mode full --epochs 2".
QUALITY_ARGS ?= --models minilm --mode head
bench-quality: $(STAMP)
	$(BIN)/jobfit bench-quality $(QUALITY_ARGS) --out bench-quality.json

# Validates docker-compose.yml as Debian's docker-compose reads it (no Docker engine needed).
compose-check:
	docker-compose --env-file .env.example config -q
	docker-compose --env-file .env.example --profile gpu config -q

schema: $(STAMP)
	$(BIN)/jobfit schema --out jobfit.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
