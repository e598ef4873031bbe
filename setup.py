# setuptools reads everything from pyproject.toml; this file exists only because cffi's
# build hook is passed as a setup() keyword (cffi_modules), which pyproject.toml cannot express.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
