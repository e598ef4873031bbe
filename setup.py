"""Build glue that pyproject.toml cannot express.

- cffi's build hook (cffi_modules) compiles native/minictr_native.c into minictr._native, and
  native/seccomp_build.py (libseccomp's API, linked with -lseccomp) into minictr._seccomp.
- native/mcinit.c is a small static program (see its header comment: the CVE-2019-5736 defence
  and --init) that is installed as package data: minictr/mcinit.
"""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildWithInit(build_ext):
    def run(self):
        super().run()
        targets = [os.path.join("minictr", "mcinit")]          # in-place (editable installs)
        if not self.inplace:
            targets.append(os.path.join(self.build_lib, "minictr", "mcinit"))
        cc = os.environ.get("CC", "cc")
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            subprocess.check_call([cc, "-static", "-Os", "-Wall", "-s", "-o", target,
                                   os.path.join("native", "mcinit.c")])


setup(cffi_modules=["native/build.py:ffibuilder", "native/seccomp_build.py:ffibuilder"],
      cmdclass={"build_ext": BuildWithInit})
