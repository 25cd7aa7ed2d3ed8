"""Compiles the C core (sim/c/skyloop.h) with cffi at install time; everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["sim/build_ffi.py:ffibuilder"])
