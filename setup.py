from setuptools import find_packages, setup

setup(
    name="covidnetx",
    version="0.1.0",
    description="Horovod + MPI toolkit for scaling laws of transfer from large-scale pre-training "
                "to small chest X-ray targets",
    python_requires=">=3.9",
    packages=find_packages(include=["covidnetx", "covidnetx.*", "data_tools", "data_tools.*"])
    + ["covidnetx.jobscripts"],
    # the Slurm templates and common.sh live in jobscripts/ at the top of the source tree and are installed
    # as covidnetx/jobscripts/ (covidnetx.slurm finds them in either place)
    package_dir={"covidnetx.jobscripts": "jobscripts"},
    package_data={"covidnetx": ["configs/*.yaml"], "covidnetx.jobscripts": ["*.tmpl", "*.sh", "*.sbatch"]},
    install_requires=[
        "numpy", "h5py>=3.10", "pyyaml", "pillow", "opencv-python-headless", "tqdm", "torch", "torchvision",
        "mpi4py>=4.0", "tensorboard", "scipy", "scikit-learn", "matplotlib", "timm==1.0.29", "safetensors",
    ],
    extras_require={
        # horovod is built against the installed torch by .ci/setup_env.sh (see README)
        "horovod": ["horovod==0.28.1"],
        "dali": ["nvidia-dali-cuda130"],
        "test": ["pytest", "pytest-timeout", "hypothesis"],
    },
    entry_points={"console_scripts": ["covidnetx=covidnetx.cli:main"]},
)
