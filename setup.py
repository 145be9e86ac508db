"""Builds the _llmem extension module with CMake (see pyproject.toml for the metadata).

The static library and the module are built in build/python/ (reused by later installs).
LLMEM_BUILD_JOBS sets the parallel jobs (default: all CPUs).
"""

import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = ROOT / "build" / "python"
        jobs = os.environ.get("LLMEM_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([
            "cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DLLMEM_BUILD_PYTHON=ON", "-DLLMEM_BUILD_TESTS=OFF", "-DLLMEM_BUILD_BENCHMARKS=OFF",
            f"-DPython_EXECUTABLE={sys.executable}"
        ])
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_llmem", "-j", jobs])
        built = sorted((build / "python").glob("_llmem*.so"))
        if not built:
            raise RuntimeError(f"CMake built no _llmem module in {build / 'python'}")
        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[-1], target)


setup(ext_modules=[CMakeExtension("llmem._llmem")], cmdclass={"build_ext": CMakeBuild})
