# minictr — the two commands a new user needs:  make run   (the demo, no network)
#                                                make test  (every test tier this machine can run)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  ?= $(PY) -m pytest
# Debian's /usr/bin/python3 when there is one (README, "Which Python"): it starts faster than a
# pyenv build (no .pth-laden site-packages) and lives where every user can read it; else
# whatever python3 is on PATH.
BOOTSTRAP_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
IMAGES  := .test-images

# Debian packages: libcap-dev builds python-prctl, libseccomp-dev builds minictr._seccomp;
# python3-dev and python3-venv let the rootless tier install minictr for its unprivileged users
# with /usr/bin/python3. The rest are the peers and servers the test tiers and benchmarks use
# (docker-registry, skopeo, umoci, runc, crun, bwrap, podman, ch-run; qemu and a Debian kernel
# for the VM tier; containerd and docker.io, whose daemons the engines tier starts privately;
# Slurm, munge, PMI2 and PMIx for the Slurm tier, which runs its own daemons; squashfs-tools and
# squashfuse for single-file images, Go and the SIF reference sources to build siftool;
# nftables, passt (pasta) and slirp4netns for --network bridge, root and rootless).
DEB_BUILD := build-essential libcap-dev libffi-dev libseccomp-dev python3-venv python3-dev
DEB_TEST  := busybox-static uidmap fuse-overlayfs skopeo umoci docker-registry apache2-utils \
             runc crun bubblewrap debootstrap zstd openssl curl qemu-system-x86 linux-image-amd64 \
             golang-github-opencontainers-specs-dev podman charliecloud-runtime \
             containerd docker.io slurm-wlm munge libpmi2-0-dev libpmix-dev \
             squashfs-tools squashfuse golang-go golang-github-sylabs-sif-dev \
             nftables passt slirp4netns iproute2
# Installed without their Recommends: docker.io's (cgroupfs-mount, needrestart, ...) change how
# the machine boots and restarts services, and no test needs them.
DEB_NO_RECOMMENDS := containerd docker.io
POLICY_RC_D ?= /usr/sbin/policy-rc.d

.PHONY: install compile deps test unit fuzz soak run bench clean

install: $(VENV)/.installed $(VENV)/.launchers

# Package scripts must not start daemons (docker.io's would start dockerd on /var/lib/docker): a
# policy-rc.d that denies every start is put in place for the install unless one exists.
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(DEB_BUILD) $(DEB_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    plain=$$(for p in $$missing; do case " $(DEB_NO_RECOMMENDS) " in *" $$p "*) ;; *) echo $$p;; esac; done); \
	    norec=$$(for p in $$missing; do case " $(DEB_NO_RECOMMENDS) " in *" $$p "*) echo $$p;; esac; done); \
	    guard=; if [ ! -e $(POLICY_RC_D) ]; then \
	      printf '#!/bin/sh\n# minictr make deps: no daemon starts while packages install\nexit 101\n' \
	        > $(POLICY_RC_D) && chmod 755 $(POLICY_RC_D) && guard=1; fi; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq \
	      && { [ -z "$$plain" ] || apt-get install -y -qq $$plain >/dev/null; } \
	      && { [ -z "$$norec" ] || apt-get install -y -qq --no-install-recommends $$norec >/dev/null; }; \
	    status=$$?; [ -z "$$guard" ] || rm -f $(POLICY_RC_D); exit $$status; \
	  fi; \
	else echo "not root: skipping Debian packages ($(DEB_BUILD))"; fi

$(VENV)/.installed: pyproject.toml setup.py native/minictr_native.c native/minictr_native.h native/build.py native/mcinit.c \
                   native/seccomp_build.py
	$(MAKE) deps
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# compat mode: a plain path entry instead of an import hook (the hook costs ~20 ms a start)
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# bin/minictr and bin/minictr-runc as `#!/usr/bin/python3.11 -IS` with the venv's paths written
# in, in place of pip's console scripts: no site.py, no .pth code at each start (README, "Which
# Python"; minictr/launchers.py).
$(VENV)/.launchers: $(VENV)/.installed minictr/launchers.py
	$(PY) -m minictr.launchers
	touch $@

# Byte-compile the sources: imports then read .pyc files even where PYTHONDONTWRITEBYTECODE is
# set (it is, on these machines), instead of compiling ~40 modules at every start.
compile: install
	$(PY) -m compileall -q minictr rootfs_tools >/dev/null

unit: compile
	$(PYTEST) -q tests/unit

test: compile
	$(PYTEST) -q -ra tests

# The fuzz tier for longer than CI gives it: FUZZ_SECONDS per target (CI: 5).
FUZZ_SECONDS ?= 300
fuzz: compile
	MINICTR_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTEST) -q tests/fuzz

# The soak tier with more runs than CI's: SOAK_RUNS runs of each kind (CI: see tests/soak), and
# the root tier's chaos test (SIGKILL during run) with as many kills.
SOAK_RUNS ?= 500
soak: compile
	MINICTR_SOAK_RUNS=$(SOAK_RUNS) $(PYTEST) -q -m soak tests
	MINICTR_CHAOS_RUNS=$(SOAK_RUNS) $(PYTEST) -q tests/root/test_chaos.py

run: compile
	$(PY) -m rootfs_tools demo $(IMAGES)/demo
	$(VENV)/bin/minictr run --rm oci:$(IMAGES)/demo:latest

bench: compile
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info minictr/_native*.so $(IMAGES)
