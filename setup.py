"""FLAT: unrolled MRI reconstruction as conditional probability flows, with fused kernels."""
from setuptools import find_packages, setup

setup(
    name="flat-mri",
    version="0.1.0",
    description="FLAT: unrolled networks as conditional probability-flow ODEs for accelerated MRI, "
    "with fused Triton/CuPy data-consistency kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["flat", "flat.*", "flat_kernels", "flat_kernels.*"]),
    package_data={"flat.data": ["assets/*"], "flat_kernels": ["cuda/*.cu"]},
    include_package_data=True,
    # torch.library.custom_op / register_fake / register_autograd / opcheck arrived in torch 2.4;
    # the project is tested with 2.13.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.23",
        "h5py>=3.6",
        "scikit-image>=0.19",  # SSIM exactly as fastMRI computes it
        "tqdm>=4.60",
        "matplotlib>=3.5",
    ],
    extras_require={
        # Triton 3.6 is the oldest release the kernels are checked with (.ci/run; docs/gpu.md)
        "triton": ["triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        # pick the CuPy wheel of your CUDA major (docs/gpu.md): torch's own CUDA version,
        # python3 -c "import torch; print(torch.version.cuda)"; [ctk]: the cuFFT/NVRTC libraries
        "cupy": ["cupy-cuda12x[ctk]>=13"],  # CUDA 12.x
        "cupy13": ["cupy-cuda13x[ctk]>=13.6"],  # CUDA 13.x (e.g. torch 2.11+cu130)
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
            # what fastmri 0.3.0's data/models/evaluate modules import, for the fastMRI-parity
            # tests; fastmri itself goes in with --no-deps (README's test command): its metadata
            # pulls torchvision and Lightning, which break beside the pinned torch
            "pandas", "pyyaml", "requests", "runstats",
            # tests/test_espirit.py checks FLAT's ESPIRiT maps against sigpy's EspiritCalib
            # (sigpy 0.1.27 pulls numba, llvmlite and PyWavelets; installs from PyPI with numpy 2.4)
            "sigpy>=0.1.26",
        ],
    },
    entry_points={"console_scripts": ["flat=flat.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
