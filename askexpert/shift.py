"""Fashion-MNIST as a camera would see it: a reproducible, camera-like shift.

A deployed camera never sees the training set: its lighting, focus, lens angle, compression and
sensor differ. This shift makes that reproducible, so that the edge's on-site learning (issue 27)
can be measured. Every image gets its own draw (seeded by `SEED`, its stream and its index: one
image's look never depends on the others or on the order) of, in this order, with Pillow:

  1. viewpoint: rotation uniform in +-`ROTATE_DEG` x severity degrees, black fill;
  2. defocus: Gaussian blur, radius uniform in [0, `BLUR_RADIUS` x severity] pixels;
  3. lighting: contrast factor 1 - U(0, `CONTRAST_LOSS` x severity) (towards grey: haze, glare),
     then brightness factor 1 +- U(0, `BRIGHTNESS` x severity) (exposure);
  4. sensor noise: Gaussian, sigma uniform in [0, `NOISE_SIGMA` x severity] grey levels;
  5. compression: JPEG at quality 95 - `JPEG_DROP` x severity (at least 10).

The streams, `dataset:shifted-fashion-mnist:collect` and `...:score` (`askexpert.datasets`; any
source or truth spec reads them, `python -m evaluation render` writes either as a recording):
  - `collect`: the 6000 training images the reference pack held out for validation (the trainer's
    `train_val_split`, fraction 0.1, seed 0: never trained on). On-site learning collects, learns
    and recalibrates tau here only, and the severity is calibrated here.
  - `score`: the 10000 test images. Nothing is tuned on it; it only scores.
They share no source image (train against test files), and their draws differ by stream.

`SEVERITY` was chosen once by a rule (`python -m evaluation shift calibrate`): the smallest of
`GRID` at which the reference pack's 3H loses at least `CALIBRATION_DROP_PT` points of top-1 on the
collect stream against the same images clean. The margin above the 5 pt the issue asks for on the
scoring stream is there because the scoring stream is never looked at while choosing
(`python -m evaluation shift measure` then reports clean test against the shifted scoring stream).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SEED = 27
STREAMS = {"collect": 0, "score": 1}
ROTATE_DEG = 6.0
BLUR_RADIUS = 0.5
CONTRAST_LOSS = 0.25
BRIGHTNESS = 0.2
NOISE_SIGMA = 6.0
JPEG_DROP = 25.0
GRID = tuple(0.25 * i for i in range(1, 13))  # 0.25 .. 3.0
CALIBRATION_DROP_PT = 8.0
SEVERITY = 1.25  # by the rule above: collect 83.32 clean -> 71.60 (1.0: 77.18); docs/results/edge-learning/shift.json


def shift_image(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """One grey uint8 image (H, W, 1) through the camera transforms of the module docstring."""
    im = Image.fromarray(image[..., 0])
    im = im.rotate(rng.uniform(-1, 1) * ROTATE_DEG * severity, resample=Image.BILINEAR, fillcolor=0)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, BLUR_RADIUS * severity)))
    im = ImageEnhance.Contrast(im).enhance(1 - rng.uniform(0, CONTRAST_LOSS * severity))
    im = ImageEnhance.Brightness(im).enhance(1 + rng.uniform(-1, 1) * BRIGHTNESS * severity)
    noisy = np.asarray(im, np.float32) + rng.normal(0, rng.uniform(0, NOISE_SIGMA * severity), im.size[::-1])
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=max(10, int(95 - JPEG_DROP * severity)))
    return np.asarray(Image.open(buf))[..., None]


def shift_images(images: np.ndarray, stream: str, severity: float = SEVERITY, start: int = 0) -> np.ndarray:
    """Images (N, H, W, 1) of `stream`, the first being its image number `start`, shifted."""
    if stream not in STREAMS:
        raise ValueError(f"the shift has streams {sorted(STREAMS)}, not {stream!r}")
    rngs = (np.random.default_rng([SEED, STREAMS[stream], start + i]) for i in range(len(images)))
    return np.stack([shift_image(im, severity, rng) for im, rng in zip(images, rngs)])
