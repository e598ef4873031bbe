#!/bin/bash
# minictr GPU device check. From the repo root: bash .gpurun/device_check.sh
# Carried: .gpurun/rt.tgz (python3.11 + deps + minictr's native builds), this script, vecadd.cu.
# Every step runs even when an earlier one failed; the whole run stays under BUDGET seconds.
OUT=${OUT:-/tmp/gpucheck-out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-380}
START=$(date +%s)
exec 3>&1 4>&2
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
export PYTHONUNBUFFERED=1 LC_ALL=C.UTF-8 PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
REPO=$(pwd); G=$REPO/.gpurun
SUMMARY=$OUT/summary.txt; : > "$SUMMARY"
# step NAME SECONDS CMD...: run CMD under a timeout capped by what is left of BUDGET
step() {
  { local was_x=0; case $- in *x*) was_x=1;; esac; set +x; } 2>/dev/null
  local name=$1 secs=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  [ "$secs" -gt "$left" ] && secs=$left
  if [ "$secs" -le 0 ]; then echo "== SKIP $name (out of time)" >&2; echo "SKIP $name" >> "$SUMMARY"; [ $was_x = 1 ] && set -x; return 99; fi
  echo "== BEGIN $name (limit ${secs}s) $(date +%T): $*" >&2
  local t0=$(date +%s%N)
  timeout -k 5 "$secs" "$@"; local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "== END $name rc=$rc ${ms}ms" >&2
  printf '%-34s rc=%-4s %6sms\n' "$name" "$rc" "$ms" >> "$SUMMARY"
  [ $was_x = 1 ] && set -x
  return $rc
}
set -x

# ---- 0. the machine
uname -a; id; head -4 /etc/os-release; nproc
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,pci.bus_id,memory.total --format=csv
ls -la /dev/nvidia* /dev/nvidia-caps 2>&1 | head -30
cat /proc/driver/nvidia/version; ls /proc/driver/nvidia/gpus
mount | head -40; stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers 2>&1
grep -E '^Cap(Eff|Bnd)|^Seccomp|^NoNewPrivs' /proc/self/status
ls /usr/local/nvidia /usr/local/nvidia/bin /usr/local/nvidia/lib64 2>&1 | head -40
which nvcc gcc cc busybox ldconfig tar; ldconfig -p | grep -E 'libcuda\.|libnvidia-ml' ; cat /proc/sys/kernel/unprivileged_userns_clone /proc/sys/user/max_user_namespaces 2>&1

# ---- 1. the carried runtime: unpack, native builds into minictr/, missing system libraries
[ -x "$G/bin/python3.11" ] || step unpack 60 tar -xzf "$G/rt.tgz" -C "$REPO"
for f in "$G"/native/*; do [ -e "$REPO/minictr/$(basename "$f")" ] || cp -a "$f" "$REPO/minictr/"; done
ls -la "$REPO"/minictr/*.so "$REPO/minictr/mcinit"
mkdir -p "$G/ldpath"; rm -f "$G"/ldpath/*
for lib in "$G"/syslib/*; do
  so=$(basename "$lib")
  if [ -n "${GPURUN_ALL_LIBS:-}" ] || ! ldconfig -p | grep -q "^[[:space:]]*$so "; then ln -sf "../syslib/$so" "$G/ldpath/$so"; fi
done
echo "carried libraries in use: $(ls "$G/ldpath" | tr '\n' ' ')"
. "$G/env.sh"
export PATH="$G/bin:$PATH"
PY=$G/bin/python3.11
MC="$G/bin/minictr"
step imports 60 "$PY" -c 'import sys; print(sys.version); print(sys.executable, sys.prefix); print(sys.path)
import minictr._native, minictr._seccomp, prctl, cffi, pyroute2, zstandard, yaml
from pyroute2 import IPRoute
import minictr.runtime.container, minictr.gpu.inject
try:
    import isal; print("isal", isal.__file__)
except ImportError as e: print("isal: not carried (", e, ")")
import ssl, hashlib; print(ssl.OPENSSL_VERSION)
print("imports ok")'
step minictr-version 30 "$MC" --version

# ---- 2. the GPU test tier
export MINICTR_NVIDIA_DRIVER_ROOT=/usr/local/nvidia
step pytest-gpu 200 "$PY" -m pytest -q -ra tests/gpu -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml"

# ---- 3. by hand: an image of this machine's binaries plus a CUDA program built here
W=/tmp/gpucheck; mkdir -p "$W" /opt/gpucheck
export MINICTR_ROOT=$W/store MINICTR_STATE=$W/state
step nvcc 120 nvcc -O2 -arch=sm_90 -gencode arch=compute_90,code=compute_90 -o /opt/gpucheck/vecadd "$G/vecadd.cu" \
  || cp "$G/vecadd.prebuilt" /opt/gpucheck/vecadd
step vecadd-outside 30 /opt/gpucheck/vecadd
# A glibc image as CUDA images are: the libraries libcuda and nvidia-smi load from the image
# (libpthread, libdl, librt, libm) and an os-release (Ubuntu: libraries go to the multiarch dir).
# img-bare has no os-release: libraries go to /usr/lib64, found only through minictr's ld.so.cache.
BINS="/opt/gpucheck/vecadd /bin/sh /bin/true /bin/ls /bin/cat /usr/bin/env /usr/bin/id"
for l in libpthread.so.0 libdl.so.2 librt.so.1 libm.so.6; do
  for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
    [ -e "$d/$l" ] && { BINS="$BINS $d/$l"; break; }
  done
done
step image 90 "$PY" -m rootfs_tools host-binaries "$W/img" $BINS /etc/os-release --tag latest
step image-bare 90 "$PY" -m rootfs_tools host-binaries "$W/img-bare" $BINS --tag latest
REF=oci:$W/img:latest
# the same image loaded into the store and run by name: an oci: reference is never plan-cached,
# a name is (the second run below reuses the first one's plan, GPUs resolved afresh)
NAME=$("$MC" load "$W/img" | sed -n 's/^Loaded image: //p'); echo "loaded as $NAME"
step run-byname-gpus-all-vecadd-1 30 "$MC" run --rm --gpus all "$NAME" /opt/gpucheck/vecadd
step run-byname-gpus-all-vecadd-2 30 "$MC" run --rm --gpus all --explain "$NAME" /opt/gpucheck/vecadd 2>&1 \
  | grep -E "plan: cached|GPU driver|checksum|cudaGetDeviceCount"
step run-nogpu-true 30 "$MC" run --rm "$REF" /bin/true
step run-nogpu-ls-dev 30 "$MC" run --rm "$REF" /bin/ls /dev
nvidia-smi -L > "$W/smi-outside.txt"
step run-gpus-all-smi 30 "$MC" run --rm --gpus all "$REF" nvidia-smi -L | tee "$W/smi-inside.txt"
diff "$W/smi-outside.txt" "$W/smi-inside.txt" && echo "nvidia-smi -L: inside == outside"
step run-gpus-0-smi 30 "$MC" run --rm --gpus 0 "$REF" nvidia-smi -L
step run-gpus-all-vecadd 30 "$MC" run --rm --gpus all "$REF" /opt/gpucheck/vecadd
step run-gpus-0-vecadd 30 "$MC" run --rm --gpus 0 "$REF" /opt/gpucheck/vecadd
step run-nogpu-vecadd 30 "$MC" run --rm "$REF" /opt/gpucheck/vecadd
step run-bare-gpus-all-vecadd 30 "$MC" run --rm --gpus all "oci:$W/img-bare:latest" /opt/gpucheck/vecadd
step run-bare-gpus-all-smi 30 "$MC" run --rm --gpus all "oci:$W/img-bare:latest" nvidia-smi -L
# a non-root user: rootless minictr (no subordinate ids needed) with --gpus all
id gpucheck >/dev/null 2>&1 || useradd -m gpucheck
chmod -R a+rX "$G" "$REPO/minictr" "$REPO/rootfs_tools" 2>/dev/null; chmod a+rx "$REPO" "$(dirname "$REPO")"
mkdir -p /tmp/gpucheck-user && chown gpucheck /tmp/gpucheck-user && chmod a+rx "$W" && chmod -R a+rX "$W/img"
step rootless-gpus-all-vecadd 60 runuser -u gpucheck -- env MINICTR_ROOT=/tmp/gpucheck-user/store \
  MINICTR_STATE=/tmp/gpucheck-user/state "$MC" run --rm --gpus all "$REF" /opt/gpucheck/vecadd
step rootless-gpus-0-smi 60 runuser -u gpucheck -- env MINICTR_ROOT=/tmp/gpucheck-user/store \
  MINICTR_STATE=/tmp/gpucheck-user/state "$MC" run --rm --gpus 0 "$REF" sh -c 'id; nvidia-smi -L'
step run-gpus-all-ls 30 "$MC" run --rm --gpus all "$REF" /bin/ls -la /dev   # no nvidia-caps: only MIG needs them
step explain 30 "$MC" run --rm --gpus all --explain "$REF" nvidia-smi -L > "$OUT/explain.txt" 2>&1
cat "$OUT/explain.txt"
step spec 30 "$MC" spec --gpus all "$REF" nvidia-smi -L > "$OUT/spec-gpus-all.json" 2>&1
head -c 6000 "$OUT/spec-gpus-all.json"; echo

# ---- 4. start-up cost of --gpus all against none: paired rounds in random order, wall and CPU
# (the child's user+sys), the store on this machine's disk and on tmpfs; and where a start goes
paired() {  # paired LABEL ROUNDS REF: MINICTR_ROOT/MINICTR_STATE as exported
  "$PY" - "$1" "$2" "$MC" "$3" <<'PYEOF'
import os, random, resource, statistics, subprocess, sys, time
label, rounds, mc, ref = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
kinds = {"none": [], "gpus-all": ["--gpus", "all"]}
res = {k: [] for k in kinds}
for k in kinds:      # warm-up: the image into this store, the discovery and plan caches
    subprocess.run([mc, "run", "--rm", *kinds[k], ref, "/bin/true"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
for _ in range(rounds):
    order = list(kinds); random.shuffle(order)
    for k in order:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN); t0 = time.perf_counter()
        rc = subprocess.run([mc, "run", "--rm", *kinds[k], ref, "/bin/true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        res[k].append(((t1 - t0) * 1000, cpu * 1000, rc))
med = lambda xs: statistics.median(xs)
for k, v in res.items():
    print(f"paired {label:5} {k:8} n={len(v)} wall median={med([w for w, _, _ in v]):.1f}ms "
          f"cpu median={med([c for _, c, _ in v]):.1f}ms rcs={sorted(set(r for *_, r in v))}")
dw = [g[0] - n[0] for n, g in zip(res["none"], res["gpus-all"])]
dc = [g[1] - n[1] for n, g in zip(res["none"], res["gpus-all"])]
print(f"paired {label:5} gpus-all minus none: wall median={med(dw):+.1f}ms cpu median={med(dc):+.1f}ms")
PYEOF
}
[ $(( $(date +%s) - START )) -lt $(( BUDGET - 90 )) ] && paired disk 25 "$NAME" | tee -a "$SUMMARY"
mkdir -p /dev/shm/gpucheck
[ $(( $(date +%s) - START )) -lt $(( BUDGET - 60 )) ] && MINICTR_ROOT=/dev/shm/gpucheck/store \
  MINICTR_STATE=/dev/shm/gpucheck/state sh -c '"$0" load "$1" >/dev/null' "$MC" "$W/img" && \
  MINICTR_ROOT=/dev/shm/gpucheck/store MINICTR_STATE=/dev/shm/gpucheck/state paired tmpfs 25 "$NAME" | tee -a "$SUMMARY"
step version-x10 30 sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do "$0" --version >/dev/null; done' "$MC"
"$PY" -X importtime -c 'import minictr.cli' 2> "$OUT/importtime.txt"; sort -t'|' -k2 -n -r "$OUT/importtime.txt" | head -12

set +x
echo "== total $(( $(date +%s) - START ))s"
echo "==== SUMMARY"; cat "$SUMMARY"
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE" 2>/dev/null || sleep 1
