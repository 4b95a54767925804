"""Packaging for flanrec: the library (`flanrec`) and its SeqIO task registrations (`tasks`).

Lower bounds are the oldest versions the test suite was run against here; no exact pins,
so users on Cloud TPU can take the jax/jaxlib that matches their libtpu. Every third-party
module that flanrec/ or tasks/ imports is listed in `install_requires`
(tests/test_packaging.py checks it); torch alone stays optional (only `pytorch_model.bin`
needs it, and the error says how to convert instead).

The gin configs stay in the top-level `gin/` directory (the source of truth, what a checkout
uses) and are shipped inside the wheel as package data of `flanrec.gin`, mapped onto that
directory, so an installed flanrec finds `runs/infer.gin` without a checkout
(`flanrec.frontend.gin_cli.default_search_paths`).
"""

from setuptools import find_packages, setup

setup(
    name="flanrec",
    version="0.1.0",
    description="Instruction-tune Flan-T5 as a recommender with JAX/Flax, SeqIO and Orbax.",
    python_requires=">=3.11",
    packages=[*find_packages(include=["flanrec", "flanrec.*", "tasks", "tasks.*"]),
              "flanrec.gin"],
    package_dir={"flanrec.gin": "gin"},
    package_data={"flanrec": ["py.typed"], "flanrec.gin": ["*/*.gin"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "seqio>=0.0.19",
        "tensorflow>=2.15",  # tf.data / tf.io.gfile in flanrec.data (seqio needs it anyway)
        "gin-config>=0.5.0",
        "sentencepiece>=0.2.0",
        "clu>=0.0.12",
        "tensorboard>=2.15",  # clu.metric_writers writes event files through it
        "tensorstore>=0.1.60",
        "etils[epath]>=1.5",  # MODEL_DIR and checkpoint paths (local or gs://)
        "safetensors>=0.4",  # HF checkpoints: import, `convert --to hf`
        "ml_dtypes>=0.3",  # bfloat16 arrays in T5X checkpoints
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
            "ruff>=0.6",
        ],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["flanrec=flanrec.__main__:main"]},
)
