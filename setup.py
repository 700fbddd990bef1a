"""Build of the one C extension, ``sparseft._core``.

Compiled with ``-O3`` and without ``-march=native``: the AVX2/FMA kernels use function-level
target attributes and are chosen at import from what the CPU reports. OpenMP is used when the
compiler accepts ``-fopenmp``; without it the build still succeeds (one thread).
Extra flags come from the usual ``CFLAGS``/``LDFLAGS`` (the sanitizer build in README uses them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_accepts(compiler: list[str], flags: list[str]) -> bool:
    """Whether ``compiler`` compiles and links a small OpenMP program with ``flags``."""
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        cmd = [*compiler, *flags, path, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """Adds OpenMP flags when the compiler supports them."""

    def build_extensions(self) -> None:
        compiler = getattr(self.compiler, "compiler_so", None) or ["cc"]
        use_openmp = os.environ.get("SPARSEFT_NO_OPENMP", "") != "1" and _compiler_accepts(
            [compiler[0]], ["-fopenmp"]
        )
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            else:
                print("sparseft: building without OpenMP (compiler rejected -fopenmp)", file=sys.stderr)
        super().build_extensions()


ext = Extension(
    "sparseft._core",
    sources=sorted(glob.glob("csrc/*.c")),
    include_dirs=[numpy.get_include(), "csrc"],
    depends=sorted(glob.glob("csrc/*.h")),
    extra_compile_args=[
        "-O3",
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
    ],
    extra_link_args=["-lm"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
