# Everything a fresh machine needs: `make demo` (train + evaluate the quickstart), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install preview clean
$(BIN)/.installed: requirements.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python train.py --config configs/quickstart.py --workdir runs/quickstart
	$(BIN)/python eval.py --ckpt runs/quickstart --output_json runs/quickstart/eval.json

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --durations=15

preview: $(BIN)/.installed
	$(BIN)/python -m jaxpose.data.synthetic --preview docs/synthetic_preview.png

clean:
	rm -rf $(VENV) runs .pytest_cache
