"""Packaging for simtorch-semantic (import name ``simtorch_semantic``)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="simtorch-semantic",
    version="0.1.0",
    description=(
        "Compare what neural networks represent: CKA, RBF CKA, dCKA, RSA, Procrustes, CCA and "
        "permutation-invariant (semantic) similarity, layer x layer, with plots and overlays."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["simtorch_semantic", "simtorch_semantic.*"]),
    package_data={"simtorch_semantic": ["overlay/static/*", "photos/*"]},
    include_package_data=True,
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "scipy",
        "numba",  # the compiled certified auction (functional/matching.py)
        "matplotlib",
        "seaborn",
        "tqdm",
    ],
    extras_require={
        "overlay": ["anywidget", "scikit-learn", "pillow"],
        "docs": ["mkdocs", "mkdocs-material", "mkdocstrings[python]"],
        # soft-matching distance (optimal transport) and RTD (persistent homology)
        "measures": ["POT", "ripser"],
        "test": [
            "pytest",
            "hypothesis",
            "pandas",
            "scikit-learn",
            "scikit-image",
            "anywidget",
            "pillow",
            "playwright",
            "nbformat",
            "nbclient",
            "ipykernel",
            "jupyterlab",
            "mkdocs",
            "mkdocs-material",
            "mkdocstrings[python]",
            "POT",
            "ripser",
            "gudhi",
            "transformers",
            "timm",
            "tokenizers",
        ],
    },
    project_urls={"Documentation": "docs/index.md"},
    entry_points={"console_scripts": ["simtorch-semantic=simtorch_semantic.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
