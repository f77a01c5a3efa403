"""Robustness scores: each perturbation does what it says, seeded, under stable metric names."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from digits import robustness
from digits.reports.robustness import robustness_figure, robustness_table, write_robustness_report
from digits.robustness import (
    Perturbation,
    perturb,
    perturbation_generator,
    perturbations,
    perturbed_batches,
    robustness_scores,
)

CPU = torch.device("cpu")
BY_NAME = {p.name: p for p in perturbations("mnist")}


def apply(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`images` (N, H, W[, C]) uint8 with perturbation `name` under `seed`, as (N, H, W, C)."""
    batches = perturbed_batches(images, BY_NAME[name], seed, CPU)
    return torch.cat(list(batches)).numpy()


def blobs(n: int, side: int = 20, background: int = 0, ink: int = 255) -> np.ndarray:
    """(n, side, side, 1) uint8: a 4×4 square of `ink` in the middle of `background`."""
    images = np.full((n, side, side, 1), background, dtype=np.uint8)
    middle = side // 2
    images[:, middle - 2 : middle + 2, middle - 2 : middle + 2] = ink
    return images


def centroids(images: np.ndarray) -> np.ndarray:
    """(N, 2) (row, column) centre of mass of each image's brightness."""
    grey = images[..., 0].astype(np.float64)  # (N, H, W)
    rows, cols = np.indices(grey.shape[1:])
    total = grey.sum(axis=(1, 2))
    return np.stack([(grey * rows).sum((1, 2)) / total, (grey * cols).sum((1, 2)) / total], 1)


# ------------------------------------------------------------------ names


def test_metric_names_are_stable_and_svhn_lacks_only_invert() -> None:
    mnist = [p.metric for p in perturbations("mnist")]
    assert mnist == [
        "robust/clean",
        "robust/shift_2px",
        "robust/shift_4px",
        "robust/rotate_10deg",
        "robust/rotate_20deg",
        "robust/noise_sd25",
        "robust/noise_sd50",
        "robust/thin_1px",
        "robust/thin_2px",
        "robust/thick_1px",
        "robust/thick_2px",
        "robust/lowres_2x",
        "robust/lowres_4x",
        "robust/invert",
    ]
    assert [p.metric for p in perturbations("svhn")] == mnist[:-1]
    with pytest.raises(ValueError, match="cifar"):
        perturbations("cifar")


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize("name", ["shift_2px", "rotate_10deg", "noise_sd25"])
def test_the_seed_fixes_the_changed_images_and_another_seed_changes_them(name: str) -> None:
    images = blobs(64)
    images[:, 3, 5] = 200  # off-centre, so each rotation and shift direction shows
    first, again, other = apply(images, name, 7), apply(images, name, 7), apply(images, name, 8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_perturbations_draw_from_their_own_streams() -> None:
    # Keyed by name: two perturbations of the same seed and batch do not share their draws.
    shift = torch.randint(0, 4, (32,), generator=perturbation_generator(0, BY_NAME["shift_2px"], 0))
    other = torch.randint(0, 4, (32,), generator=perturbation_generator(0, BY_NAME["shift_4px"], 0))
    assert not torch.equal(shift, other)


# ------------------------------------------------------------------ each does what it says


def test_clean_is_the_test_set_unchanged() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12), dtype=np.uint8)
    assert np.array_equal(apply(images, "clean"), images[..., None])


@pytest.mark.parametrize("pixels", [2, 4])
def test_a_shift_moves_the_centroid_by_its_pixels_along_one_axis(pixels: int) -> None:
    images = blobs(64)
    moved = centroids(apply(images, f"shift_{pixels}px")) - centroids(images)  # (N, 2)
    assert np.allclose(np.abs(moved).sum(axis=1), pixels)
    assert np.allclose(np.abs(moved).min(axis=1), 0)  # along one axis only
    # All four directions are drawn, in about equal numbers.
    directions = {tuple(np.sign(m).astype(int)) for m in moved}
    assert directions == {(0, 1), (0, -1), (1, 0), (-1, 0)}


def test_a_shift_continues_the_edge_rather_than_bringing_in_black() -> None:
    images = np.full((8, 10, 10, 3), 180, dtype=np.uint8)  # a plain light wall, as in SVHN
    assert (apply(images, "shift_4px") == 180).all()
    assert (apply(images, "rotate_20deg") == 180).all()


@pytest.mark.parametrize("degrees", [10, 20])
def test_a_rotation_turns_a_bar_by_its_angle_about_the_centre(degrees: int) -> None:
    side = 33
    images = np.zeros((16, side, side, 1), dtype=np.uint8)
    images[:, 15:18, 4:29] = 255  # a horizontal bar through the centre
    turned = apply(images, f"rotate_{degrees}deg")[..., 0].astype(np.float64)  # (N, H, W)
    rows, cols = np.indices((side, side)) - (side - 1) / 2  # from the centre
    total = turned.sum(axis=(1, 2))
    # Orientation of the principal axis from the second moments, in degrees.
    xx = (turned * cols**2).sum((1, 2)) / total
    yy = (turned * rows**2).sum((1, 2)) / total
    xy = (turned * rows * cols).sum((1, 2)) / total
    angles = np.degrees(0.5 * np.arctan2(2 * xy, xx - yy))
    assert np.allclose(np.abs(angles), degrees, atol=1.0)
    assert {bool(a > 0) for a in angles} == {True, False}  # both ways are drawn
    assert np.allclose(centroids(turned[..., None]), (side - 1) / 2, atol=0.2)


@pytest.mark.parametrize("sd", [25, 50])
def test_noise_has_the_named_standard_deviation(sd: int) -> None:
    images = np.full((64, 16, 16, 1), 128, dtype=np.uint8)  # mid-grey: clamping stays rare
    added = apply(images, f"noise_sd{sd}").astype(np.float64) - 128
    assert abs(added.mean()) < 1.0
    assert added.std() == pytest.approx(sd, rel=0.05)


def test_thick_and_thin_strokes_change_the_stroke_width_by_their_pixels() -> None:
    images = np.zeros((2, 12, 12, 1), dtype=np.uint8)
    images[:, 2:10, 5:8] = 255  # a vertical stroke 3 pixels wide
    width = {name: int((apply(images, name)[0, 6, :, 0] > 127).sum()) for name in BY_NAME}
    assert width["clean"] == 3
    assert (width["thick_1px"], width["thick_2px"]) == (4, 5)
    assert (width["thin_1px"], width["thin_2px"]) == (2, 1)


def test_a_thicker_stroke_is_more_ink_on_either_background() -> None:
    dark_ink = blobs(4, background=230, ink=20)  # a dark digit on light paper (SVHN has both)
    light_ink = blobs(4)
    for images, is_ink in ((light_ink, lambda x: x > 127), (dark_ink, lambda x: x < 127)):
        ink = {name: int(is_ink(apply(images, name)).sum()) for name in ("clean", "thin_1px")}
        ink["thick_1px"] = int(is_ink(apply(images, "thick_1px")).sum())
        assert ink["thin_1px"] < ink["clean"] < ink["thick_1px"]


def test_lower_resolution_blurs_fine_detail_and_keeps_flat_areas() -> None:
    rows, cols = np.indices((16, 16))
    checks = np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)[None, ..., None]
    flat = np.full((1, 16, 16, 1), 90, dtype=np.uint8)
    for name in ("lowres_2x", "lowres_4x"):
        blurred = apply(checks, name).astype(np.float64)
        assert blurred.std() < 5 and abs(blurred.mean() - 127.5) < 2  # the checks average out
        assert (apply(flat, name) == 90).all()


@pytest.mark.parametrize("shape", [(5, 28, 28, 1), (4, 32, 32, 3), (3, 19, 23, 1)])
def test_the_geometry_is_torchvisions_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int, int]
) -> None:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(shape[0], shape[3], *shape[1:3], generator=torch.Generator().manual_seed(3))
    x = x * 255  # (B, C, H, W) float on the 0-255 scale, as `perturb` holds it
    bilinear = InterpolationMode.BILINEAR
    for angle in (10.0, -10.0, 20.0, -20.0, 33.3):
        assert torch.equal(robustness.rotate_bilinear(x, angle), TF.rotate(x, angle, bilinear))
    images = (x[:, 0] if shape[3] == 1 else x.permute(0, 2, 3, 1)).to(torch.uint8).numpy()
    ours = {p.name: apply(images, p.name, seed=4) for p in perturbations("svhn")}
    # The same perturbations with torchvision's own functions in place of ours.
    monkeypatch.setattr(
        robustness, "_pad_edge", lambda x, p: TF.pad(x, [p] * 4, padding_mode="edge")
    )
    monkeypatch.setattr(robustness, "rotate_bilinear", lambda x, a: TF.rotate(x, a, bilinear))
    monkeypatch.setattr(robustness, "_center_crop", lambda x, h, w: TF.center_crop(x, [h, w]))
    monkeypatch.setattr(
        robustness, "_resize", lambda x, h, w, antialias: TF.resize(x, [h, w], antialias=antialias)
    )
    for name, changed in ours.items():
        assert np.array_equal(changed, apply(images, name, seed=4)), name


def test_invert_flips_every_pixel() -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 9, 9, 1), dtype=np.uint8)
    assert np.array_equal(apply(images, "invert"), 255 - images)


def test_perturb_keeps_the_batch_device_and_layout() -> None:
    colour = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    out = perturb(colour, Perturbation("lowres_2x", "lowres", 2), torch.Generator())
    assert out.shape == (2, 8, 8, 3) and out.dtype == torch.uint8 and out.device == CPU


# ------------------------------------------------------------------ scores


LEVELS = (40, 80, 175, 215)  # none near 127.5, so inverting moves every level to another's


class LevelReader(nn.Module):
    """Class k for images whose median brightness is nearest `LEVELS[k]`."""

    levels: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor(LEVELS, dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        level = images.flatten(1).float().median(dim=1).values  # (B,)
        nearest = (level[:, None] - self.levels).abs().argmin(dim=1)  # (B,)
        return nn.functional.one_hot(nearest, 10).float()  # (B, 10)


class AlwaysThree(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return nn.functional.one_hot(torch.full((len(images),), 3), 10).float()


def plain_levels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16, 16, 1) plain images of brightness `LEVELS[label]`, labels cycling 0-3."""
    labels = np.arange(n) % len(LEVELS)
    levels = np.array(LEVELS, dtype=np.uint8)[labels, None, None, None]
    return np.ascontiguousarray(np.broadcast_to(levels, (n, 16, 16, 1))), labels


def test_scores_are_accuracies_per_metric_with_labels_kept_in_step_across_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Several batches, each starting mid-cycle of the labels: they must stay in step.
    monkeypatch.setattr(robustness, "CHUNK", 50)
    images, labels = plain_levels(200)
    scores = robustness_scores(LevelReader(), images, labels, "mnist", seed=0, device=CPU)
    assert list(scores) == [p.metric for p in perturbations("mnist")]
    # A plain image looks the same shifted, turned, thinned, thickened or blurred; noise of
    # sd 50 moves the median of 256 pixels by 4 levels (sd; clamping at 0 and 255 leaves it
    # be), a fifth of the 20 that change a class; inverting takes each level to another's.
    assert scores.pop("robust/invert") == 0.0
    assert scores == dict.fromkeys(scores, 1.0)

    constant = robustness_scores(AlwaysThree(), images, labels, "svhn", seed=0, device=CPU)
    assert "robust/invert" not in constant
    assert constant == dict.fromkeys(constant, 0.25)


def test_scores_read_prepared_arrays_as_they_are_stored(tmp_path: Path) -> None:
    images, labels = plain_levels(20)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")  # read-only, as prepared arrays are
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns before wrapping read-only memory
        scores = robustness_scores(LevelReader(), mapped, labels, "svhn", seed=0, device=CPU)
    assert scores["robust/clean"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_and_images_on_cuda_match_the_cpu() -> None:
    cuda = torch.device("cuda")
    images, labels = plain_levels(200)
    on_cpu = robustness_scores(LevelReader(), images, labels, "mnist", seed=0, device=CPU)
    model = LevelReader()
    assert robustness_scores(model, images, labels, "mnist", seed=0, device=cuda) == on_cpu
    assert model.levels.device == CPU  # moved back where it was, ready to be saved
    digits = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    for perturbation in perturbations("mnist"):
        cpu_images = torch.cat(list(perturbed_batches(digits, perturbation, 3, CPU)))
        cuda_images = torch.cat(list(perturbed_batches(digits, perturbation, 3, cuda))).cpu()
        # The same draws; bilinear resampling may round a pixel the other way.
        assert (cpu_images.int() - cuda_images.int()).abs().max() <= 1, perturbation.name


# ------------------------------------------------------------------ report


SCORES = {
    "mlp": {p.metric: 0.9 - 0.05 * i for i, p in enumerate(perturbations("mnist"))},
    "lenet": {p.metric: 0.95 - 0.02 * i for i, p in enumerate(perturbations("svhn"))},
}


def test_table_has_a_row_per_model_and_a_column_per_perturbation() -> None:
    lines = robustness_table(SCORES).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["model", *(p.name for p in perturbations("mnist"))]
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"mlp", "lenet"} and len(lines) == 4
    assert "| 0.9000 | 0.8500 |" in rows["mlp"] and rows["mlp"].endswith("| 0.2500 |")
    assert rows["lenet"].endswith("| – |")  # SVHN's model has no invert score
    with pytest.raises(ValueError, match="robust/blur"):
        robustness_table({"mlp": {"robust/blur": 0.5}})


def test_figure_has_a_panel_per_family_and_a_line_per_model() -> None:
    fig = robustness_figure(SCORES)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "shift",
        "rotate",
        "noise",
        "thin",
        "thick",
        "lowres",
        "invert",
    ]
    shift = panels[0]
    assert [line.get_label() for line in shift.get_lines()] == ["mlp", "lenet"]
    x, y = shift.get_lines()[0].get_data()
    assert list(x) == [0, 2, 4] and list(y) == pytest.approx([0.9, 0.85, 0.8])
    lowres_x = panels[5].get_lines()[0].get_xdata()
    assert list(lowres_x) == [1, 2, 4]  # the clean point sits at factor 1


def test_report_files_are_written(tmp_path: Path) -> None:
    paths = write_robustness_report(SCORES, tmp_path / "reports", title="MNIST robustness")
    table = paths["table"].read_text()
    assert table.startswith("# MNIST robustness") and "| mlp |" in table
    assert paths["figure"].read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in paths["figure"].parent.iterdir()) == ["robustness.png"]
