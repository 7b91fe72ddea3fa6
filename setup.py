#!/usr/bin/env python
"""Installs instseg, the five method packages, and the C++/CUDA extension ``instseg._C``.

The extension is built from ``csrc/``: every ``*.cpp`` always, every ``*.cu`` when the CUDA toolkit is
found and torch is a CUDA build (or ``FORCE_CUDA=1``). ``INSTSEG_NO_EXT=1`` skips the extension
entirely; the ops then fall back to their pure-PyTorch references (CPU only).

The C++ is compiled with OpenMP (``-fopenmp``) when the compiler takes it: ATen's ``at::parallel_for``, which
the CPU kernels use, is an inline OpenMP loop that runs serially in code compiled without it.
``INSTSEG_NO_OPENMP=1`` builds without; ``instseg._C.with_openmp()`` tells which it was.
"""

import glob
import os
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# The method packages that ship: the one list of them (instseg finds them through the entry points below and
# imports each, which registers what it adds; see instseg/registry.py).
METHOD_PACKAGES = ["maskpoint", "maskplus", "dsg", "rdsnet", "casnet"]


def _cuda_home_default():
    # The `nvcc` on PATH may be a wrapper outside the toolkit, which makes torch guess CUDA_HOME wrong
    # (and fail to link -lcudart). Point it at the toolkit's standard root when the user did not.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if os.path.isfile("/usr/local/cuda/bin/nvcc") or os.path.isdir("/usr/local/cuda/lib64"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")


def _openmp_flags():
    """``["-fopenmp"]`` when the C++ compiler compiles and links an OpenMP program with it, else ``[]``.

    GCC does; Apple's clang does not (it needs a separately installed libomp), and the build then goes on
    without OpenMP (the kernels run on one thread) instead of failing. At run time the extension shares
    torch's OpenMP runtime (the same ``libgomp.so.1``), so ``torch.set_num_threads`` governs its loops too.
    """
    if os.environ.get("INSTSEG_NO_OPENMP", "0") == "1":
        return []
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            done = subprocess.run([cxx, "-fopenmp", src, "-o", os.path.join(tmp, "omp")], capture_output=True)
        except OSError:
            return []
    if done.returncode != 0:
        print(f"instseg: {cxx} does not take -fopenmp; the CPU kernels will run on one thread", file=sys.stderr)
        return []
    return ["-fopenmp"]


def get_extensions():
    if os.environ.get("INSTSEG_NO_EXT", "0") == "1":
        return []
    csrc = os.path.join(HERE, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*", "*.cpp")))
    if not sources:
        return []
    _cuda_home_default()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*", "*.cu")))
    with_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (CUDA_HOME is not None and torch.version.cuda is not None)
    openmp = _openmp_flags()
    # -fno-trapping-math: the kernels never read floating-point exception flags, and without it GCC keeps a
    # comparison-and-select (`uni > 0 ? inter / uni : 0`) as a branch, which stops the loop from vectorising.
    # It changes no result (no reassociation, no contraction).
    extra = {"cxx": ["-O3", "-fno-trapping-math"] + openmp}
    define_macros = []
    ext_cls = CppExtension
    if with_cuda and cuda_sources:
        ext_cls = CUDAExtension
        sources = sources + cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-DCUDA_HAS_FP16=1"]
    rel = [os.path.relpath(s, HERE) for s in sources]
    return [
        ext_cls(
            "instseg._C",
            rel,
            include_dirs=[csrc],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=openmp,
        )
    ]


def get_cmdclass():
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:  # metadata-only invocations (no torch yet)
        return {}
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="instseg",
    version="0.1.0",
    description="Five instance-segmentation methods as detectron2 extensions: "
    "Mask Point R-CNN, MaskPlus, DSG, RDSNet and CASNet",
    packages=find_packages(include=["instseg", "instseg.*"] + [f"{p}*" for p in METHOD_PACKAGES]),
    python_requires=">=3.9",
    install_requires=[
        # torch >= 2.4: the ops' fake kernels and autograd go through torch.library.register_fake /
        # register_autograd (tested with torch.library.opcheck), their C++ schemas name that Python module with
        # Library::set_python_module, and the wrappers use torch.compiler.is_compiling.
        "torch>=2.4",
        # torchvision >= 0.29: the CPU-only torch wheel on these machines has no matching torchvision;
        # requiring a newer one makes pip take the registry's torch, whose ops load.
        "torchvision>=0.29",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "opencv-python-headless<4.11",  # >= 4.11 needs numpy 2
        "cityscapesscripts",
        "numpy<2",  # cityscapesscripts (<= 2.3) breaks on numpy 2 (np.in1d; json of numpy ints)
        "shapely",  # detectron2's Cityscapes json loader
        "Pillow",
        # detectron2 is not on the package registry: install it from its official source, e.g.
        #   pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
        # (the Makefile does this, or uses $DETECTRON2_SRC).
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"instseg.methods": [f"{p} = {p}" for p in METHOD_PACKAGES]},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
)
