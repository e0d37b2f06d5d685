# pbrforge: every target sets itself up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# PyPI's torchvision imports only beside torch 2.14.1; both lie on this machine's disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.pbrforge-installed
DEMO_DIR ?= demo_out
WEB := runtime/web

.PHONY: install demo test test-fast lint bench pretrained clean

install: $(STAMP)

HDRI := datagen/hdri

$(STAMP): pyproject.toml $(WEB)/package-lock.json $(WEB)/viewer.js $(HDRI)/package-lock.json
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[coreml,onnx,executorch,assets,examples,dev]" $(TORCH_PINS)
	@# the preview's screenshots and its tests need a browser: Debian's chromium (software WebGL)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		echo "installing chromium with apt-get (root needed)"; \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null; }
	@# three.js for the preview bundle and the Khronos glTF validator, exactly as the lockfile pins them
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	@# the room light of phone captures: npm @pmndrs/assets' CC0 HDR maps, as the lockfile pins them
	cd $(HDRI) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(STAMP)

demo: install
	$(PY) demo.py --output $(DEMO_DIR)

# Everything CI runs: lint, format, types, then every test (slow ones included: training, export,
# torchrun, the wheel in a fresh venv), the 15 slowest listed at the end. One process: two pytest-xdist
# workers on 2 cores took longer (20.0 min of tests against 15 to 18 in one process), each worker's torch threads competing.
PYTEST := $(PY) -m pytest -q --durations=15

test: lint
	$(PYTEST)

# The same minus tests marked slow.
test-fast: lint
	$(PYTEST) -m "not slow"

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@# mypy over the library and every stage as the wheel installs them (pbrforge.export, ...)
	$(PY) typecheck.py

# The results of record, one at a time, in dependency order: distill reuses teacher_quality's teacher,
# edge_error reads the distilled students, export and runtime use the demo student.
R := benchmarks/results
bench: install
	$(PY) benchmarks/teacher_quality.py
	$(PY) benchmarks/distill.py
	$(PY) benchmarks/edge_error.py $(R)/distill_ckpt/latest.pt --output $(R)/edge_error_replicate.json
	$(PY) benchmarks/distill.py --set 'model.decoder_padding="zeros"' --output $(R)/zeros
	cp $(R)/zeros/distill.json $(R)/distill_zeros.json
	$(PY) benchmarks/edge_error.py $(R)/zeros/distill_ckpt/latest.pt --output $(R)/edge_error_zeros.json
	$(PY) benchmarks/shards.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/domain_gap.py
	$(PY) benchmarks/capture_gap.py
	$(PY) benchmarks/real_capture.py pbrforge/weights/student_phone.safetensors --captures 6 --size 128 --refine 60
	@test -f $(DEMO_DIR)/student/checkpoints/best.pt || $(PY) demo.py --output $(DEMO_DIR)
	cp $(DEMO_DIR)/timings.json $(R)/demo_timings.json
	$(PY) benchmarks/export.py $(DEMO_DIR)/student/checkpoints/best.pt
	$(PY) benchmarks/runtime.py $(DEMO_DIR)/student/checkpoints/best.pt
	$(PY) benchmarks/models.py

# The default model `pbrforge run` uses with no model given: data, teacher, shards and student on this
# machine's CPU (about 25 minutes on 2 cores), written to pbrforge/weights/ with its quality table.
pretrained: install
	$(PY) benchmarks/pretrained.py

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache .ruff_cache $(WEB)/dist
