# Two commands do all set-up on a fresh machine: `make test` and `make parity`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test parity parity-train test-distributed lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-dev.txt -e ".[all,test]"
	touch $(STAMP)

# a worker that crashes fails the run at once (xdist 3.8 can hang replacing a crashed worker under a scope
# scheduler, as tests/conftest.py uses), and a test that hangs fails after 20 min
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --max-worker-restart=0 --timeout=1200 --durations=15

parity: $(STAMP)
	$(BIN)/lightnets parity --out parity-report

# optimizer-step parity: 5 steps of SGD / Nesterov / AdamW per model in torch, keras and paddle vs the
# float64 numpy reference (writes parity-report/train-report.md); ~15 min on 2 cores
parity-train: $(STAMP)
	$(BIN)/lightnets parity --train-steps 5 --backends torch,keras,paddle --out parity-report

# the slow profiles of training: DDP / MirroredStrategy / paddle.DataParallel, and the 3-model train profile
test-distributed: $(STAMP)
	LIGHTNETS_SLOW=1 $(BIN)/python -m pytest -q tests/test_distributed.py tests/test_train_steps.py

lint: $(STAMP)
	$(BIN)/ruff check lightnets backends parity tests

bench: $(STAMP)
	$(BIN)/lightnets bench

clean:
	rm -rf $(VENV) parity-report build *.egg-info
