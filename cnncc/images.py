"""Inputs of `cnncc infer`: a folder or glob of images (Pillow) or .npy arrays, made into the
model's input tensor.

Images are converted to RGB (3-channel models) or grayscale (1 channel), resized to the model's
H x W with bilinear filtering, scaled to [0, 1] and, with ``normalize="imagenet"`` (the default
for 3 channels), standardized by the ImageNet mean and std per channel. An .npy file holds one
image as (C, H, W) or (1, C, H, W), already in the model's dtype.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from .ir import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "unit")


def list_inputs(spec: str) -> list[str]:
    """The image and .npy files of a folder (sorted) or of a glob pattern."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in os.listdir(spec)]
    else:
        paths = glob.glob(spec)
        if not paths and not glob.has_magic(spec):
            raise InputError(f"--input {spec}: no such folder or file")
    paths = sorted(p for p in paths if os.path.isfile(p)
                   and p.lower().endswith(IMAGE_EXTENSIONS + (".npy",)))
    if not paths:
        raise InputError(f"--input {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) or .npy "
                         "files found")
    return paths


class ImageLoader:
    """Loads a list of paths as one batch of the model's input (shape (1, C, H, W) or, for .npy
    inputs, any (1, ...)), dtype float32 for images."""

    def __init__(self, shape: tuple[int, ...], dtype: str = "float32",
                 normalize: str = "imagenet"):
        if normalize not in NORMALIZATIONS:
            raise InputError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.normalize = normalize

    def __call__(self, paths: list[str]) -> np.ndarray:
        out = np.empty((len(paths),) + self.shape[1:], self.dtype)
        for i, path in enumerate(paths):
            out[i] = self.load(path)
        return out

    def load(self, path: str) -> np.ndarray:
        if path.lower().endswith(".npy"):
            return self._load_npy(path)
        if len(self.shape) != 4 or self.shape[1] not in (1, 3) or self.dtype != np.float32:
            raise InputError(f"{path}: images need a model input of float32[1, 1 or 3, H, W], "
                             f"this model takes {self.dtype}{list(self.shape)}")
        try:
            from PIL import Image
        except ImportError:
            raise InputError("reading images needs Pillow: pip install 'cnncc[images]'") from None
        channels, height, width = self.shape[1:]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if channels == 3 else "L")
                img = img.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, np.float32) / 255.0
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable image ({e})") from None
        pixels = pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]
        if self.normalize == "imagenet" and channels == 3:
            mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
            std = np.array(IMAGENET_STD, np.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels

    def _load_npy(self, path: str) -> np.ndarray:
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable .npy file ({e})") from None
        if a.shape == self.shape:
            a = a[0]
        if a.shape != self.shape[1:] or a.dtype != self.dtype:
            raise InputError(f"{path}: holds {a.dtype}{list(a.shape)}, the model takes one image "
                             f"as {self.dtype}{list(self.shape[1:])} (or {list(self.shape)})")
        return a
