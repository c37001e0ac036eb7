# Two commands do all set-up on a fresh machine: `make test` and `make parity`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test parity lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-dev.txt -e ".[all,test]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

parity: $(STAMP)
	$(BIN)/lightnets parity --out parity-report

lint: $(STAMP)
	$(BIN)/ruff check lightnets backends parity tests

bench: $(STAMP)
	$(BIN)/lightnets bench

clean:
	rm -rf $(VENV) parity-report build *.egg-info
