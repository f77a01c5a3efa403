"""A trained model: what it should keep, what it should change, what `predict` feeds it.

One small dense network (the MNIST study's model, shrunk) is trained once per test session, in
seconds on the CPU, on the real MNIST when a mirror of it is at hand (DIGITS_DATA_MIRRORS, or
`../shared/data` beside the checkout as in CI) and on the project's generated digits otherwise.
It then has to

- keep its (right) answer when a digit moves by one pixel: invariance;
- change its answer when the digit is replaced by one of another class: direction;
- give the same answer for a picture of a digit whatever the exact grey of its background, once
  `digits predict`'s preprocessing (`digits.images.read_image`) has made it model input.

Each test was seen red once against a broken counterpart: a model that ignores its input fails
the first two, a three-pixel shift fails the first, and the third fails on today's
preprocessing, which keeps the background's grey inside the digit's crop (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REAL_MIRRORS, fixture_resources
from digits.config import DataConfig, Recipe
from digits.data import synthetic
from digits.data.arrays import DatasetArrays, load_arrays
from digits.data.prepare import prepare
from digits.data.sources import pull
from digits.images import PictureFormat, picture_format, read_image
from digits.training.loop import predict
from digits.training.recipe import train_recipe

CPU = torch.device("cpu")
CHECKOUT = Path(__file__).resolve().parents[1]
RECIPE = Recipe.model_validate(
    {
        "model": {"name": "mlp", "args": {"depth": 1, "width": 128, "dropout": 0.0}},
        "optim": {"epochs": 4, "batch_size": 128, "lr": 3e-3},
    }
)
TRAIN_IMAGES, TEST_IMAGES = 10_000, 1_000


def real_mnist_mirror() -> Path | None:
    """A mirror directory holding the four real MNIST files, if one is at hand."""
    for mirror in [*REAL_MIRRORS, str(CHECKOUT.parent / "shared" / "data")]:
        folder = Path(mirror) / "mnist"
        if all(
            (folder / name).is_file() for pair in synthetic.MNIST_FILES.values() for name in pair
        ):
            return Path(mirror)
    return None


@dataclass(frozen=True)
class Trained:
    """The session's model and the data it was trained and is tested on."""

    model: nn.Module
    data: DatasetArrays
    real: bool

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,) predicted digits for uint8 images (N, 28, 28, 1)."""
        return predict(self.model, torch.as_tensor(np.ascontiguousarray(images)), CPU).numpy()

    @property
    def test_images(self) -> np.ndarray:
        return np.ascontiguousarray(self.data.test_images)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A dense network trained on 10,000 MNIST images (4,000 generated ones without a mirror)."""
    root = tmp_path_factory.mktemp("behavioural")
    mirror = real_mnist_mirror()
    if mirror is not None:
        cfg = DataConfig(root=root / "data", mirrors=[str(mirror)])
        pull("mnist", cfg)
    else:
        folder = root / "mirror" / "mnist"
        synthetic.write_mnist_idx(folder, n_train=4_000, n_test=TEST_IMAGES, seed=0)
        cfg = DataConfig(root=root / "data", mirrors=[str(folder.parent)])
        pull("mnist", cfg, fixture_resources(folder))
    prepare("mnist", cfg)
    data = load_arrays("mnist", cfg.root, TRAIN_IMAGES, TEST_IMAGES, seed=0)
    result = train_recipe(RECIPE, data.train_images, data.train_labels, seed=0, device=CPU)
    return Trained(result.model.cpu(), data, real=mirror is not None)


def shifted(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(N, H, W, C) images moved by whole pixels; MNIST's border is black, so black comes in."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    src_rows = slice(max(-rows, 0), height - max(rows, 0))
    src_cols = slice(max(-cols, 0), width - max(cols, 0))
    dst_rows = slice(max(rows, 0), height - max(-rows, 0))
    dst_cols = slice(max(cols, 0), width - max(-cols, 0))
    out[:, dst_rows, dst_cols] = images[:, src_rows, src_cols]
    return out


@pytest.mark.parametrize("rows, cols", [(0, 1), (0, -1), (1, 0), (-1, 0)])
def test_a_one_pixel_shift_keeps_most_right_answers(trained: Trained, rows: int, cols: int) -> None:
    """Invariance: right before and after a one-pixel move for at least 80% of the test digits.

    A dense network has no translation invariance built in; it has what MNIST's own jitter
    teaches it (digits are centred by their centre of mass, which leaves a pixel or so of play).
    Measured on the real MNIST: 0.953 right unmoved, 0.866-0.880 right both ways; a three-pixel
    move leaves 0.33-0.44 and a model that ignores its input 0.10. (On the generated digits,
    placed at random, 0.92-0.94 and 0.67-0.78.) 0.8 sits between, with room for another torch's
    arithmetic.
    """
    labels = trained.data.test_labels
    before = trained.predict(trained.test_images)
    after = trained.predict(shifted(trained.test_images, rows, cols))
    assert np.mean((before == labels) & (after == labels)) >= 0.8


def test_another_digit_changes_the_answer(trained: Trained) -> None:
    """Direction: a digit swapped for one of another class changes the answer for >= 90% of pairs.

    Each test digit is paired with a random other (about 890 of the 1,000 pairs are of different
    classes). A model right 95% of the time can keep its answer only where it is wrong about one
    of the two in just the way that names the other's answer; measured: 0.989 (0.997 on the
    generated digits). A model that ignores its input keeps every one.
    """
    labels = trained.data.test_labels
    partner = np.random.default_rng(0).permutation(len(labels))
    differ = labels != labels[partner]  # pairs of different classes only
    predicted = trained.predict(trained.test_images)
    assert differ.sum() > 0.8 * len(labels)
    assert np.mean(predicted[differ] != predicted[partner][differ]) >= 0.9


def picture(digit: np.ndarray, background: int, paper: bool = False) -> Image.Image:
    """A 28×28 MNIST digit as a user's 112×112 photo: its black lifted to `background` grey.

    With `paper`, dark ink on light paper instead (grey 255 - `background`), as a digit written
    with a pen is photographed.
    """
    big = np.asarray(
        Image.fromarray(digit).resize((112, 112), Image.Resampling.LANCZOS), dtype=np.float64
    )
    grey = background + big * (255 - background) / 255
    if paper:
        grey = 255 - grey
    return Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8))


def test_predict_preprocessing_ignores_the_background_grey(
    trained: Trained, tmp_path: Path
) -> None:
    """The same digit on black, on grey 10 or 30, or dark on paper gives the same answer.

    `digits predict` turns each picture into model input with `read_image` and the training
    images' `PictureFormat`. 200 test digits are written as PNG pictures on each background;
    at least 98% must get the answer they get on black (a digit whose ink barely clears the
    background may still tip). Seen red without `read_image`'s levelling (the digit cropped with
    its grey background and pasted onto black, the crop's box a grey rectangle): on the real
    MNIST the answer stayed for 0.945 (grey 10), 0.875 (grey 30) and 0.91 (ink 20 on paper 235).
    """
    digits = trained.test_images[:200, ..., 0]  # (200, 28, 28)
    fmt: PictureFormat = picture_format(np.asarray(trained.data.train_images[:100]))
    assert fmt.background == "dark"

    def answers(background: int, paper: bool = False) -> np.ndarray:
        inputs = []
        for i, digit in enumerate(digits):
            path = tmp_path / f"{background}-{paper}-{i}.png"
            picture(digit, background, paper).save(path)
            inputs.append(read_image(path, fmt))
        return trained.predict(np.stack(inputs))

    on_black = answers(0)
    # Not vacuous: the pictures are read as digits (a model ignoring its input would agree).
    assert np.mean(on_black == trained.data.test_labels[:200]) >= 0.7
    for background, paper in ((10, False), (30, False), (20, True)):
        same = np.mean(answers(background, paper) == on_black)
        assert same >= 0.98, f"background {background}, paper {paper}: {same:.3f} unchanged"
