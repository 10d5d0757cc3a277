# Continuon Brain — every entry point a robot builder or CI needs.
# `make run` and `make test` work on a fresh Debian/Ubuntu machine: they create
# the virtualenv and install what is missing (pip packages, and Debian packages
# the tests use, with apt-get).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# torch_xla pins its torch (2.9.0) below the main environment's, so the PyTorch/XLA test
# (PJRT_DEVICE=CPU, the TPU code path) runs `cloud_jobs train` from its own environment.
XLA_VENV  ?= .venv-xla
XLA_STAMP := $(XLA_VENV)/.installed-xla
# lerobot 0.4.x pins torch<2.11, so LeRobot's own reader (tests/test_export_lerobot.py loads
# exports with it) gets its own environment, on the same torch 2.9.0 wheel as .venv-xla.
LEROBOT_VENV  ?= .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed-lerobot
CONFIG ?= configs/sim-donkey.yaml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages used by the tests: systemd-analyze verifies the unit file, a real mosquitto
# broker for the MQTT link, headless Chromium + chromedriver for the companion app, libusb for
# the real pyrealsense2 wheel (the RealSense driver tests run it on a software device), FFmpeg's
# shared libraries (libavcodec, libavformat, libavutil, libavdevice, libavfilter, libswscale,
# libswresample) for torchcodec, LeRobot's video decoder: the ffmpeg package depends on exactly
# those, under one name on every Debian/Ubuntu release.
APT_PACKAGES := systemd mosquitto chromium chromium-driver libusb-1.0-0 ffmpeg

.PHONY: help venv xla-venv lerobot-venv run demo test test-fast test-random pi-check bench hw-check lint format install-service system-deps clean

help:
	@echo "make run              run the daemon on the simulated robot (foreground, Ctrl-C stops)"
	@echo "make demo             end-to-end pipeline on the simulated robot (BUDGET=minutes, ARGS=--skip-train)"
	@echo "make test             install everything needed and run the test suite"
	@echo "make test-fast        the fast lane: no slow or integration tests, no apt, under a minute"
	@echo "make test-random      the fast lane in random order (SEED=n replays an order)"
	@echo "make pi-check         install and run on an emulated Pi OS root (Debian 12 arm64, qemu; root)"
	@echo "make bench            run the benchmarks (tables on stdout, JSON in bench/results/)"
	@echo "make hw-check         check the robot's hardware (CONFIG=..., ARGS=--sim/--move)"
	@echo "make lint             ruff check + format check, mypy, import contracts"
	@echo "make install-service  install the systemd unit on the robot (root)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

$(XLA_STAMP): pyproject.toml
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install -q --upgrade pip
	$(XLA_VENV)/bin/python -m pip install -q -e '.[xla]'
	@touch $@

xla-venv: $(XLA_STAMP)

$(LEROBOT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LEROBOT_VENV)/bin/python -m pip install -q -e '.[lerobot]'
	@touch $@

lerobot-venv: $(LEROBOT_STAMP)

run: venv
	$(BIN)/continuon run --config $(CONFIG)

BUDGET ?= 20
demo: venv
	$(BIN)/continuon pipeline --budget-minutes $(BUDGET) $(ARGS)

system-deps:
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	/sbin/ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0 ' || missing="$$missing libusb-1.0-0"; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: venv xla-venv lerobot-venv system-deps
	CONTINUON_XLA_PYTHON=$(abspath $(XLA_VENV))/bin/python \
	LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/bin/python $(BIN)/python -m pytest -q

# The fast lane (docs/testing.md): no apt packages, no side environments, no browser, no daemon
# subprocess, no training; every package has tests in it.
FAST_LANE := not slow and not integration
# pytest-xdist: a worker per core (WORKERS=0: one process, the exact order); a file's tests and
# its module fixtures stay on one worker; `timing` tests run alone (tests/parallel.py).
WORKERS ?= auto
XDIST := -n $(WORKERS) --dist loadfile

test-fast: venv
	$(BIN)/python -m pytest -q -m "$(FAST_LANE)" $(XDIST)

# Order dependence shows up here: pytest-randomly shuffles modules and tests and prints the seed
# (SEED=n WORKERS=0 replays it in one process: every worker ran a subsequence of that order).
test-random: venv
	$(BIN)/python -m pytest -q -m "$(FAST_LANE)" $(XDIST) -p randomly $(if $(SEED),--randomly-seed=$(SEED))

# The robot's platform, emulated: a Debian 12 arm64 root (cached under /var/cache/continuon-pi-check)
# under qemu-user-static, the real installer, daemon, hw-check, policy backends and the torch-free
# tests in it (docs/install-pi.md).  The host venv makes the policy models (torch).
pi-check: venv
	$(SUDO) env HOST_PYTHON=$(abspath $(BIN))/python tools/pi-check/pi-check.sh

bench: venv
	@mkdir -p bench/results
	$(BIN)/python bench/control_loop.py --seconds 20 --json bench/results/control_loop.json
	$(BIN)/python bench/sim_render.py --seconds 5 --json bench/results/sim_render.json
	$(BIN)/python bench/policy_runner.py --seconds 5 --json bench/results/policy_runner.json
	$(BIN)/python bench/recording_io.py --seconds 10 --json bench/results/recording_io.json
	$(BIN)/python bench/recording.py --seconds 60 --json bench/results/recording.json
	$(BIN)/python bench/export.py --episodes 8 --steps 100 --json bench/results/export.json
	$(BIN)/python bench/train.py --json bench/results/train.json
	$(BIN)/python bench/model_export.py --json bench/results/model_export.json
	$(BIN)/python bench/teleop.py --json bench/results/teleop.json
	$(BIN)/python bench/ota.py --json bench/results/ota.json
	$(BIN)/python bench/local_train.py --json bench/results/local_train.json
	$(BIN)/python bench/network.py --json bench/results/network.json

# On an installed robot hw-check runs the installed command against its own config
# (/etc/continuon/robot.yaml unless CONFIG is given); elsewhere the dev venv and CONFIG.
INSTALLED_CONTINUON ?= /opt/continuon/venv/bin/continuon
ifneq ($(wildcard $(INSTALLED_CONTINUON)),)
hw-check:
	$(INSTALLED_CONTINUON) hw-check $(if $(filter command line environment,$(origin CONFIG)),--config $(CONFIG)) $(ARGS)
else
hw-check: venv
	$(BIN)/continuon hw-check --config $(CONFIG) $(ARGS)
endif

# ruff, mypy (strict for brain/ rlds/ edge_agent/, see [tool.mypy]) and DESIGN.md's import
# contracts ([tool.importlinter]): the dependency directions and no import cycles.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# On the robot: CONFIG defaults to the Pi donkey car here, not to the sim.
install-service:
	$(SUDO) systemd/install.sh $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),configs/pi5-donkey.yaml)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/results *.egg-info
