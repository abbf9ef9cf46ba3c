# QuickSAM: `make demo` and `make test` install whatever is missing, then run.
# Debian 12 (bookworm, QGIS 3.22) or Debian 13 (trixie, QGIS 3.40 LTR): QGIS from Debian, a venv on Debian's
# python3 with --system-site-packages.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
APT_PACKAGES := python3-qgis qgis-providers qgis xvfb xauth imagemagick python3-venv qttools5-dev-tools
DEMO_DIR ?= $(HOME)/quicksam-demo
export QT_QPA_PLATFORM ?= offscreen

.PHONY: all install demo demo-batch test test-other-release lint bench screenshot screenshot-series walkthrough clean-venv package translations translations-update

all: test

# --- system packages (QGIS, Xvfb, Qt tools): checked again whenever this Makefile changes (cheap: dpkg-query) ---
$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@if dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -vq 'install ok installed' \
	    || [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l)" -ne "$(words $(APT_PACKAGES))" ]; then \
	  echo "Installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

# --- numpy: the ABI the distribution's GDAL and QGIS were built with --------------------------------
# Debian 12's bindings need numpy 1.x, Debian 13's numpy 2.x: the venv may upgrade numpy within the
# system's major version (sam2 needs a newer 1.x than Debian 12 has), never across it.
$(STAMPS)/numpy-abi.txt: | $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	/usr/bin/python3 -c "import numpy; v = numpy.__version__; print(f'numpy>={v},<{int(v.split(\".\")[0]) + 1}')" > $@
	@echo "numpy for this system: $$(cat $@)"

# --- the venv: torch first (sam2 builds against it without isolation), then the rest -----------
$(STAMPS)/venv: $(STAMPS)/numpy-abi.txt requirements.txt requirements-torch.txt pyproject.toml | $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-torch.txt "$$(cat $(STAMPS)/numpy-abi.txt)"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -r requirements.txt \
	  "$$(cat $(STAMPS)/numpy-abi.txt)"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import qgis.core, torch, sam2, segment_anything, rasterio, onnxruntime, quicksam"
	@touch $@

install: $(STAMPS)/venv

demo: install
	$(PY) -m quicksam.demo --output "$(DEMO_DIR)"

# Many rasters in one run and on Dask clusters (docs/batch.md, docs/scaling.md): the test folder of
# tests/batch_data.py encoded and segmented, then a LocalCluster run and a scheduler + two workers on 127.0.0.1.
demo-batch: install
	PY=$(PY) bash docs/demo/batch_demo.sh "$(DEMO_DIR)/batch"

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

# The same suite on the other supported Debian release (12 <-> 13), in a debootstrap chroot that is built
# once and reused; it tests a fresh clone of the committed HEAD. Needs root. See .ci/other_release.sh.
test-other-release:
	bash .ci/other_release.sh

bench: install
	$(PY) bench/encode.py
	$(PY) bench/decode.py
	$(PY) bench/segment_all.py
	$(PY) bench/decoder_batch.py

clean-venv:
	rm -rf $(VENV) $(STAMPS)

screenshot: install
	bash docs/screenshot/make_screenshot.sh

# docs/img/time-series-frame*.png: a series from the real raster's bands, objects tracked, the Temporal Controller.
screenshot-series: install
	bash docs/screenshot/series_screenshot.sh

# From the zip to a polygon in the real desktop under Xvfb (fresh profile; set-up with real pip); the
# pictures docs/install.md shows. tests/test_desktop_install.py runs the same walkthrough.
walkthrough: install
	bash docs/screenshot/walkthrough.sh docs/img "$${TMPDIR:-/tmp}/quicksam-walkthrough.json"

# --- translations: i18n/quicksam_<LANG>.ts for translators, compiled to the .qm files the plugin loads -----
# `make translations-update LANGS="de fr"` writes or refreshes the .ts files (translations kept);
# `make translations` compiles every i18n/*.ts with Qt's lrelease (qttools5-dev-tools). Commit the .qm files:
# the zip is built from git.
LANGS ?=
translations-update:
	@[ -n "$(LANGS)" ] || { echo 'translations-update: say which languages, e.g. LANGS="de fr"' >&2; exit 1; }
	python3 tools/translations.py update $(LANGS)

translations: $(STAMPS)/apt
	python3 tools/translations.py build

# --- the plugin zip for QGIS's plugin manager (Install from ZIP) and the plugin repository --------------
# `git archive` of HEAD with one top folder quicksam/: tracked files only, less the development paths
# marked export-ignore in .gitattributes. The version is metadata.txt's. Installs nothing.
DIST ?= dist
PLUGIN_VERSION = $(shell git show HEAD:metadata.txt | sed -n 's/^version=//p')

package:
	@[ -n "$(PLUGIN_VERSION)" ] || { echo "package: no version= in metadata.txt at HEAD" >&2; exit 1; }
	@git diff --quiet HEAD || echo "package: uncommitted changes are not in the zip (it is built from HEAD)" >&2
	@mkdir -p $(DIST)
	git archive --format=zip --prefix=quicksam/ --output=$(DIST)/quicksam-$(PLUGIN_VERSION).zip HEAD
	@echo "$(DIST)/quicksam-$(PLUGIN_VERSION).zip: $$(du -k $(DIST)/quicksam-$(PLUGIN_VERSION).zip | cut -f1) KiB"
