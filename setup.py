"""Packaging for flanrec: the library (`flanrec`) and its SeqIO task registrations (`tasks`).

Lower bounds are the oldest versions the test suite was run against here; no exact pins,
so users on Cloud TPU can take the jax/jaxlib that matches their libtpu.
"""

from setuptools import find_packages, setup

setup(
    name="flanrec",
    version="0.1.0",
    description="Instruction-tune Flan-T5 as a recommender with JAX/Flax, SeqIO and Orbax.",
    python_requires=">=3.11",
    packages=find_packages(include=["flanrec", "flanrec.*", "tasks", "tasks.*"]),
    package_data={"flanrec": ["py.typed"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "seqio>=0.0.19",
        "tensorflow-datasets>=4.9.0",
        "gin-config>=0.5.0",
        "sentencepiece>=0.2.0",
        "clu>=0.0.12",
        "tensorboard>=2.15",  # clu.metric_writers writes event files through it
        "tensorstore>=0.1.60",
        "msgpack>=1.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "pyarrow>=14",
        "matplotlib>=3.8",  # eval plots HR@K / NDCG@K (Agg backend, no display)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers>=4.45",
            "safetensors>=0.4",
            "ruff>=0.6",
        ],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["flanrec=flanrec.__main__:main"]},
)
