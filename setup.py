"""kdrobust: adversarially robust knowledge distillation in JAX/Flax."""
import setuptools

setuptools.setup(
    name="kdrobust",
    version="0.1.0",
    description="Adversarially robust knowledge distillation in JAX/Flax: "
    "KDIGA, AdaAD, IGDM, DARHT and baselines, with a faithful AutoAttack.",
    packages=setuptools.find_packages(include=["kdrobust", "kdrobust.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12.2,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.20,<0.13",
        "ml-collections>=1.0",
        "chex>=0.1.90",
        "numpy>=1.26",
        # The dataset layer: read through tfds.data_source over ArrayRecord, no TensorFlow.
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5",
        # train_iterator(workers=N) / config.data.workers: batches built in worker processes.
        "grain>=0.2.12",
        "importlib_resources",  # TFDS needs it to prepare datasets but does not declare it.
        "pillow",
        # Bundled 8x8 digits: the real dataset that works on any machine with no network.
        "scikit-learn>=1.3",
        "tqdm>=4.60",  # progress bars with ETA.
        "tensorboardX>=2.6",  # TensorBoard summaries without TensorFlow.
    ],
    extras_require={
        # Reference implementations for the cross-checks. torch==2.13.0 has a local CPU wheel on CI.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "torch==2.13.0",
            "pyautoattack==0.2.0",
            # tests/notebooks_test.py executes colabs/*.ipynb headlessly.
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "matplotlib>=3.7",
            "pandas>=2.0",
        ],
        "tf": ["tensorflow-cpu>=2.16"],
        "plot": ["matplotlib>=3.7"],
        # What colabs/ and the README's examples import beyond kdrobust: figures and metrics.jsonl tables.
        "notebooks": ["matplotlib>=3.7", "pandas>=2.0"],
    },
    entry_points={"console_scripts": ["kdrobust=kdrobust.main:run"]},
)
