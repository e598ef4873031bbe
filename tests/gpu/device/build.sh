#!/bin/bash
# Builds .gpurun/ (git-ignored) in the checkout: a relocatable Debian python3.11, minictr's
# dependencies from the venv (make install first), minictr's native builds and pytest, packed
# into .gpurun/rt.tgz with device_check.sh and vecadd.cu beside it. See README.md here.
set -eu
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
G=$REPO/.gpurun
SP=$REPO/.venv/lib/python3.11/site-packages
rm -rf "$G/bin" "$G/lib" "$G/site" "$G/syslib" "$G/native" "$G/ldpath" "$G/rt.tgz"
mkdir -p "$G/bin" "$G/lib" "$G/site" "$G/syslib" "$G/native"
cp /usr/bin/python3.11 "$G/bin/python3.11"
# stdlib, trimmed
cp -a /usr/lib/python3.11 "$G/lib/python3.11"
( cd "$G/lib/python3.11" && rm -rf test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data \
    config-3.11-x86_64-linux-gnu distutils venv __phello__ EXTERNALLY-MANAGED turtle.py \
    lib-dynload/_test* lib-dynload/xx* lib-dynload/_xx* lib-dynload/_ctypes_test* lib-dynload/nis* \
    lib-dynload/_dbm* lib-dynload/_curses* lib-dynload/readline* \
    lib-dynload/ossaudiodev* lib-dynload/audioop* && find . -name __pycache__ -prune -exec rm -rf {} + )
# site-packages: minictr's runtime deps and pytest's
for p in cffi _cffi_backend.cpython-311-x86_64-linux-gnu.so pycparser prctl.py _prctl.cpython-311-x86_64-linux-gnu.so \
         pyroute2 zstandard isal yaml _yaml \
         pytest _pytest pygments pluggy iniconfig packaging py.py typing_extensions.py; do
  cp -a "$SP/$p" "$G/site/"
done
find "$G/site" -name __pycache__ -prune -exec rm -rf {} +
# pygments (pytest 9 imports it): only the Python and diff lexers pytest uses
( cd "$G/site/pygments/lexers" && for f in *.py; do case $f in __init__.py|_mapping.py|python.py|diff.py) ;; *) rm -f "$f";; esac; done )
rm -f "$G/site/zstandard/_cffi."*.so          # the C backend is the default; the cffi one is a 12 MB fallback
find "$G/site" -name '*.so' -exec strip --strip-debug {} +
# minictr's own ignored build outputs (mcinit, cffi modules): copied back into minictr/ on the device
cp -a $REPO/minictr/_native.abi3.so $REPO/minictr/_seccomp.abi3.so $REPO/minictr/mcinit "$G/native/"
strip --strip-debug "$G/native/"*.so
# shared libraries outside glibc that the binary and the carried .so files need
for so in "$G/bin/python3.11" "$G/lib/python3.11/lib-dynload/"*.so $(find "$G/site" "$G/native" -name '*.so'); do
  ldd "$so" | awk '/=> \//{print $3}'
done | sort -u | grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux-x86-64|libssl|libcrypto)\.so' | while read -r lib; do
  cp -L "$lib" "$G/syslib/"
done
cat > "$G/env.sh" <<'ENV'
# sourced with G set to the absolute path of .gpurun (sh/bash)
export PYTHONHOME="$G" PYTHONPATH="$(dirname "$G"):$G/site" PYTHONNOUSERSITE=1
case ":${LD_LIBRARY_PATH:-}:" in *":$G/ldpath:"*) ;; *) export LD_LIBRARY_PATH="$G/ldpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}";; esac
ENV
for pair in minictr:minictr.cli minictr-runc:minictr.runc_cli; do
  name=${pair%%:*}; mod=${pair#*:}
  cat > "$G/bin/$name" <<W
#!/bin/sh
# like the venv's console script, through the carried interpreter
G=\$(cd "\$(dirname "\$0")/.." && pwd); . "\$G/env.sh"
exec "\$G/bin/python3.11" -P -c 'import sys; from $mod import entry; sys.argv[0] = "$name"; sys.exit(entry())' "\$@"
W
  chmod 755 "$G/bin/$name"
done
cat > "$G/bin/python" <<'W'
#!/bin/sh
G=$(cd "$(dirname "$0")/.." && pwd); . "$G/env.sh"
exec "$G/bin/python3.11" "$@"
W
chmod 755 "$G/bin/python"
mkdir -p "$G/ldpath"
cp "$(dirname "$0")/build.sh" "$(dirname "$0")/device_check.sh" "$(dirname "$0")/vecadd.cu" "$(dirname "$0")/phases.py" "$G/"
# byte-compile only what a run and the GPU tests import (unchecked-hash: valid whatever mtimes
# the copy to the device gives the sources); the rest compiles on first import there
cd "$REPO" && PYTHONDONTWRITEBYTECODE=1 "$G/bin/python" - <<'PY'
import atexit, os, py_compile, sys
def dump():
    g = os.environ["PYTHONHOME"]
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None) or ""
        if f.startswith(g + "/") and f.endswith(".py"):
            py_compile.compile(f, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
atexit.register(dump)
import minictr.cli, minictr.api, minictr.runtime.container, minictr.runtime.rtnetlink, minictr.gpu.cdi
import minictr.image.registry, minictr.image.layerstream, rootfs_tools.__main__, rootfs_tools.build
import cffi, prctl, pyroute2, zstandard, isal, yaml, json, tarfile, gzip, subprocess, argparse
from pyroute2 import IPRoute
try:
    import isal.isal_zlib
except ImportError:
    pass
import pytest
pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", "tests/gpu", "tests/unit"])
PY
find "$G" -name __pycache__ | xargs du -cs | tail -1
du -sh "$G"; du -sh "$G"/*
# the one file that travels: everything the device check needs but this script and vecadd.cu
[ -x "$G/vecadd.prebuilt" ] || nvcc -O2 -arch=sm_90 -gencode arch=compute_90,code=compute_90 -o "$G/vecadd.prebuilt" "$G/vecadd.cu" || true
# minictr's own modules, byte-compiled with checked hashes (valid whatever mtimes the copy gives
# the sources, and never stale where a source is edited later): the device has
# PYTHONDONTWRITEBYTECODE set and the working tree travels without __pycache__, so without these
# every start there compiled ~40 modules (~150 ms of a 290 ms start, seen 2026-12-04)
STAGE=$(mktemp -d); trap 'rm -rf "$STAGE"' EXIT
cd "$REPO" && "$G/bin/python3.11" -I -c '
import importlib.util, os, py_compile, sys
stage = sys.argv[1]
for top in ("minictr", "rootfs_tools"):
    for d, _, names in os.walk(top):
        for n in names:
            if n.endswith(".py"):
                src = os.path.join(d, n)
                py_compile.compile(src, cfile=os.path.join(stage, importlib.util.cache_from_source(src)),
                                   doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
' "$STAGE"
cd "$REPO" && tar -czf "$G/rt.tgz" .gpurun/bin .gpurun/lib .gpurun/site .gpurun/syslib .gpurun/native .gpurun/env.sh .gpurun/build.sh $( [ -e "$G/vecadd.prebuilt" ] && echo .gpurun/vecadd.prebuilt ) \
  -C "$STAGE" minictr rootfs_tools
ls -la "$G/rt.tgz"
