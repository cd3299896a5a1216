"""Packaging for vjepa-fast.

`kernels/` sits at the top level of the repository (next to benchmarks and tests) but is
installed as `vjepa_fast.kernels`, so nothing claims the global module name `kernels`.
"""
import sys

from setuptools import setup

# triton only ships Linux wheels; elsewhere the package runs on its PyTorch references.
install_requires = ["numpy", "pyyaml", "torch>=2.4"]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.0")

setup(
    name="vjepa-fast",
    version="0.1.0",
    description="Fast, faithful V-JEPA: video self-supervised pretraining and frozen attentive probes",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["vjepa_fast", "vjepa_fast.kernels"],
    package_dir={"vjepa_fast": "vjepa_fast", "vjepa_fast.kernels": "kernels"},
    install_requires=install_requires,
    extras_require={
        # PyAV everywhere; decord only where it has wheels (data.decoder=auto falls back to PyAV);
        # safetensors for vjepa-fast embed's default output
        "video": ["av", "decord; platform_system == 'Linux' and platform_machine == 'x86_64'", "safetensors"],
        "demo": ["scikit-learn", "scikit-video", "pillow", "matplotlib"],
        "dev": ["pytest", "pytest-benchmark", "pytest-xdist"],
        "hf": ["safetensors"],  # Hugging Face V-JEPA 2 checkpoints (vjepa_fast.hf_vjepa2)
    },
    entry_points={"console_scripts": ["vjepa-fast=vjepa_fast.cli:main"]},
)
