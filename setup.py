"""Builds vjepa_fast._C from csrc/ with ninja when a C++ compiler is present.

CUDA sources (csrc/*.cu) are compiled only when a CUDA toolkit and a CUDA build of torch are
both present. VJEPA_FAST_SKIP_EXT=1 skips the extension entirely; the package then runs on its
Triton and plain-PyTorch paths.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

PACKAGES = ["vjepa_fast", "vjepa_fast.ops", "vjepa_fast.kernels", "vjepa_fast.worlds", "vjepa_fast.jobs"]
PACKAGE_DIR = {"vjepa_fast.kernels": "kernels"}


def extension_modules():
    if os.environ.get("VJEPA_FAST_SKIP_EXT") == "1":
        print("vjepa_fast: VJEPA_FAST_SKIP_EXT=1, installing without the compiled extension", file=sys.stderr)
        return [], {}
    cpp = sorted(glob.glob("csrc/*.cpp"))
    cu = sorted(glob.glob("csrc/*.cu"))
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cpp or compiler is None:
        print("vjepa_fast: no C++ compiler or sources, installing pure Python "
              "(Triton and PyTorch paths only)", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-std=c++17"]
    if cu and CUDA_HOME is not None and torch.version.cuda is not None:
        ext = CUDAExtension("vjepa_fast._C", cpp + cu, define_macros=[("WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]})
    else:
        if cu:
            print("vjepa_fast: no CUDA toolkit or CPU-only torch, building the C++ CPU ops only", file=sys.stderr)
        ext = CppExtension("vjepa_fast._C", cpp, extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
