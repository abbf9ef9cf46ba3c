# QuickSAM: `make demo` and `make test` install whatever is missing, then run.
# Debian 12 (bookworm): QGIS 3.22 from Debian, a venv on Debian's python3 with --system-site-packages.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
APT_PACKAGES := python3-qgis qgis-providers qgis xvfb xauth imagemagick python3-venv
DEMO_DIR ?= $(HOME)/quicksam-demo
export QT_QPA_PLATFORM ?= offscreen

.PHONY: all install demo test lint bench screenshot clean-venv

all: test

# --- system packages (QGIS, Xvfb) ---------------------------------------------------------------
$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -vq 'install ok installed' \
	    || [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l)" -ne "$(words $(APT_PACKAGES))" ]; then \
	  echo "Installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

# --- the venv: torch first (sam2 builds against it without isolation), then the rest -----------
$(STAMPS)/venv: $(STAMPS)/apt requirements.txt requirements-torch.txt pyproject.toml
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-torch.txt
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import qgis.core, torch, sam2, segment_anything, rasterio, onnxruntime, quicksam"
	@touch $@

install: $(STAMPS)/venv

demo: install
	$(PY) -m quicksam.demo --output "$(DEMO_DIR)"

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install
	$(PY) bench/encode.py
	$(PY) bench/decode.py
	$(PY) bench/segment_all.py
	$(PY) bench/decoder_batch.py

clean-venv:
	rm -rf $(VENV) $(STAMPS)

screenshot: install
	bash docs/screenshot/make_screenshot.sh
