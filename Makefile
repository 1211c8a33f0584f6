# asfda developer commands. The README names two of them: `make demo` and `make test`.
# Each works on a fresh machine: it fetches ONNX Runtime (PyPI wheel) and the Python test
# packages into .cache/ and .venv/ first.

PYTHON   ?= python3
VENV     := .venv
VPY      := $(VENV)/bin/python
ORT_VERSION := $(shell sed -n 's/^onnxruntime==//p' scripts/requirements-test.txt)
ORT_CPU  := .cache/onnxruntime/cpu/libonnxruntime.so.$(ORT_VERSION)
ORT_GPU  := .cache/onnxruntime/gpu/libonnxruntime.so.$(ORT_VERSION)
NILEARN  := nilearn==0.14.1
CMAKE_BUILD := cpp_demo/build

.PHONY: all ort ort-gpu venv build data demo test test-rust test-python test-c test-gpu header clean-cache

all: build

## ONNX Runtime shared library from the PyPI wheel (CPU; `ort-gpu` for the CUDA flavour).
ort: $(ORT_CPU)
$(ORT_CPU):
	scripts/fetch_ort.sh cpu
ort-gpu: $(ORT_GPU)
$(ORT_GPU):
	scripts/fetch_ort.sh gpu

## Python virtualenv with the test packages (nibabel is the reference NIfTI reader; nilearn is
## installed without its dependencies only for the real MNI152 files it ships).
venv: $(VENV)/.stamp
$(VENV)/.stamp: scripts/requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r scripts/requirements-test.txt
	$(VPY) -m pip install --quiet --no-deps $(NILEARN)
	touch $@

build:
	cargo build --release

## Synthetic subjects and sites from the real ICBM152 anatomy (deterministic; ~2 min).
DATA := .cache/data/synthetic-v1
data: $(DATA)/manifest.json
$(DATA)/manifest.json: $(VENV)/.stamp scripts/make_data.py bindings/python/asfda_tools/synth.py bindings/python/asfda_tools/anatomy.py
	$(VPY) scripts/make_data.py --out $(DATA)

## The main job on the shipped defaults.
demo: ort build
	target/release/asfda demo

## Every test: Rust unit + integration tests (header drift included), the Python cross-checks
## against nibabel and onnxruntime, and the C/C++ tests under ctest.
test: ort venv
	cargo build
	$(MAKE) test-rust test-python test-c

test-rust:
	cargo test

test-python:
	ASFDA_LIBRARY=$(CURDIR)/target/debug/libasfda.so ASFDA_CLI=$(CURDIR)/target/debug/asfda \
	  PYTHONPATH=$(CURDIR)/bindings/python $(VPY) -m pytest -q tests/python bindings/python/tests/test_synth.py

test-c:
	$(VENV)/bin/cmake -S cpp_demo -B $(CMAKE_BUILD) -DASFDA_LIB_DIR=$(CURDIR)/target/debug -DCMAKE_BUILD_TYPE=Debug > /dev/null
	$(VENV)/bin/cmake --build $(CMAKE_BUILD) -j 2
	cd $(CMAKE_BUILD) && ../../$(VENV)/bin/ctest --output-on-failure

## GPU tests (need an NVIDIA GPU): CUDA-flavour ONNX Runtime, then the #[ignore]d GPU tests.
test-gpu: ort-gpu
	ASFDA_ORT_LIBRARY=$(CURDIR)/$(ORT_GPU) cargo test -- --ignored gpu

## Regenerate the committed C header from the Rust sources.
header:
	ASFDA_UPDATE_HEADER=1 cargo build

clean-cache:
	rm -rf .cache $(VENV) $(CMAKE_BUILD)
