"""Translation augmentation pads with black in pixel space, like the data's own background."""

import torch

from trainer.engine import augment


def test_translation_border_is_black_not_mean_grey():
    mean, std = 0.2859, 0.353
    black = (0.0 - mean) / std  # a black pixel after normalisation
    x = torch.full((64, 1, 28, 28), black)
    x[:, :, 10:18, 10:18] = (1.0 - mean) / std  # a white square in the middle
    fill = torch.tensor([black])
    out = augment(x, 2, False, torch.Generator().manual_seed(0), fill)
    # every pixel is either the black background or the white square: no other value appears
    white = (1.0 - mean) / std
    assert torch.all(torch.isclose(out, torch.tensor(black), atol=1e-6) | torch.isclose(out, torch.tensor(white), atol=1e-6))
    # translations happened (the square moved in some samples), and its mass is kept
    assert any(not torch.equal(out[i], x[i]) for i in range(64))
    assert torch.allclose((out > 0).float().sum(dim=(1, 2, 3)), torch.full((64,), 64.0))


def test_zero_fill_would_paint_a_grey_border():
    """The bug this guards against: zero padding after normalisation is the mean grey, not black."""
    mean, std = 0.2859, 0.353
    x = torch.full((32, 1, 28, 28), (0.0 - mean) / std)
    out = augment(x, 2, False, torch.Generator().manual_seed(1))  # no fill: zeros
    assert (out == 0.0).any()  # 0.0 normalised = pixel value `mean`: grey
    assert 0.0 * std + mean == mean
