"""Build mcfast's compiled op library (``mcfast._C``); everything else is in pyproject.toml.

CPU kernels are always built. CUDA kernels are added when nvcc is found
(``CUDA_HOME``, default ``/usr/local/cuda``); ``MCFAST_CUDA=0`` skips them and
``MCFAST_CUDA=1`` makes a missing toolkit an error.
"""
import glob
import os
import shutil

from setuptools import setup


def _want_cuda():
    flag = os.environ.get("MCFAST_CUDA", "auto").lower()
    if flag in ("0", "no", "off", "false"):
        return False
    home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    found = bool(home and os.path.exists(os.path.join(home, "bin", "nvcc"))) or shutil.which("nvcc") is not None
    if flag in ("1", "yes", "on", "true") and not found:
        raise RuntimeError("MCFAST_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit")
    if found and home:
        # cpp_extension guesses /usr/local when CUDA_HOME is unset and then fails to link.
        os.environ["CUDA_HOME"] = home
    return found


def _extensions():
    # Before importing cpp_extension, which reads CUDA_HOME once at import (see _want_cuda).
    with_cuda = _want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fopenmp: at::parallel_for is inline OpenMP in torch's headers (without it the kernels run on one thread;
    # torch's own libgomp.so.1 is the one loaded). -fno-math-errno lets sqrt vectorise; -ffp-contract=off
    # keeps results identical across the AVX-512 / AVX2 / baseline clones (csrc/cpu/vec_math.h).
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    link = ["-fopenmp"]
    if os.environ.get("MCFAST_NATIVE", "0") == "1":
        cxx.append("-march=native")
    # MCFAST_PYTHON_MODULE: only this build defines PyInit__C (the CMake ops library has no Python).
    define_macros = [("MCFAST_PYTHON_MODULE", "1")]  # cpp_extension defines Py_LIMITED_API itself
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        ext = CUDAExtension(
            "mcfast._C", sources, include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx + ["-DMCFAST_WITH_CUDA"], "nvcc": ["-O3", "-std=c++20", "-DMCFAST_WITH_CUDA", "--use_fast_math"]},
            define_macros=define_macros, extra_link_args=link, py_limited_api=True)
    else:
        ext = CppExtension(
            "mcfast._C", sources, include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx}, define_macros=define_macros, extra_link_args=link, py_limited_api=True)
    return [ext]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# Metadata, dependencies, package data and the console script are in pyproject.toml; only the
# extension (whose sources and flags are computed) stays here.
setup(
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
