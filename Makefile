# minictr — the two commands a new user needs:  make run   (the demo, no network)
#                                                make test  (every test tier this machine can run)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  ?= $(PY) -m pytest
BOOTSTRAP_PYTHON ?= python3
IMAGES  := .test-images

# Debian packages: libcap-dev builds python-prctl; python3-dev and python3-venv let the rootless
# tier install minictr for its unprivileged users with /usr/bin/python3. The rest are the peers
# and servers the test tiers and benchmarks use (docker-registry, skopeo, umoci, runc, crun,
# bwrap, podman, ch-run; qemu and a Debian kernel for the VM tier; Slurm, munge and PMI2 for the
# Slurm tier, which runs its own daemons: installing must not start the packaged services, so a
# policy-rc.d that refuses every start is put in place for the install when none exists).
DEB_BUILD := build-essential libcap-dev libffi-dev python3-venv python3-dev
DEB_TEST  := busybox-static uidmap fuse-overlayfs skopeo umoci docker-registry apache2-utils \
             runc crun bubblewrap debootstrap zstd openssl curl qemu-system-x86 linux-image-amd64 \
             golang-github-opencontainers-specs-dev podman charliecloud-runtime \
             slurm-wlm munge libpmi2-0-dev

.PHONY: install compile deps test unit run bench clean

install: $(VENV)/.installed

deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(DEB_BUILD) $(DEB_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d; \
	      trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping Debian packages ($(DEB_BUILD))"; fi

$(VENV)/.installed: pyproject.toml setup.py native/minictr_native.c native/minictr_native.h native/build.py
	$(MAKE) deps
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# compat mode: a plain path entry instead of an import hook (the hook costs ~20 ms a start)
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# Byte-compile the sources: imports then read .pyc files even where PYTHONDONTWRITEBYTECODE is
# set (it is, on these machines), instead of compiling ~40 modules at every start.
compile: install
	$(PY) -m compileall -q minictr rootfs_tools >/dev/null

unit: compile
	$(PYTEST) -q tests/unit

test: compile
	$(PYTEST) -q -ra tests

run: compile
	$(PY) -m rootfs_tools demo $(IMAGES)/demo
	$(VENV)/bin/minictr run --rm oci:$(IMAGES)/demo:latest

bench: compile
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info minictr/_native*.so $(IMAGES)
