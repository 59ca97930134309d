"""The one compiled piece: the upload check's line scanner (worker/training/_linescan.c).

Optional: where no C compiler is found the build goes on without it, and the check takes its
pure-Python path (msgspec), slower, with the same verdicts."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("worker.training._linescan", ["worker/training/_linescan.c"], optional=True,
                             extra_compile_args=["-O2"])])
