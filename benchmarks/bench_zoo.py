"""Benchmark the zoo's training throughput: the engine against a plain loop and a DataLoader recipe.

For each zoo model, on the same device in the same run, one pass over the same images with
the same optimiser and batch size:

* **plain**: a hand-written PyTorch loop over float tensors resized and normalised once up front
  (the fastest simple loop; no augmentation); in `--stage`, the plain loop augments as the flow
  does (uint8 on the device, the model's augmentation, then converted per batch), so the ratio
  measures the flow, not the recipe;
* **engine**: `digits.training.recipe.train_recipe`, what every flow task runs (uint8 on the device,
  converted, resized and normalised per batch), with augmentation off and with the model's own
  augmentation from params.yaml;
* **pil+loader**: the common tutorial recipe: PIL images, torchvision transforms (resize, random
  affine, colour jitter, to-tensor, normalise) in `--loader-workers` DataLoader worker processes.

Images/s count training images only (after `--warmup` batches). `--stage` adds the end-to-end
comparison the zoo issue sets for LeNet-5 on MNIST: the whole `train_zoo` flow (Prefect, Dask,
MLflow, registration) against the plain loop training the same recipe for the same epochs and
scoring what the flow's task scores (the training set, the test set and its changed copies of
`digits.robustness`), with both test accuracies.

Both sides run under the project's steady allocator (`digits.edges.allocator`, as every flow
does): with glibc's default, the same loop's speed changed by half from one process to the next.

    python benchmarks/bench_zoo.py [--dataset mnist] [--models lenet5,resnet18] [--images 20000]
        [--device auto] [--loader-workers 8] [--stage]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from digits.config import Params, Recipe, load_params
from digits.data.arrays import load_arrays
from digits.edges.allocator import steady_allocator
from digits.models import build_classifier
from digits.robustness import robustness_scores
from digits.training.augment import BatchTransform, make_augment
from digits.training.loop import autocast, select_device
from digits.training.optim import make_optimizer, make_schedule
from digits.training.recipe import train_recipe

REPO = Path(__file__).resolve().parents[1]
NO_AUGMENT = {"translate": 0, "rotate_deg": 0.0, "brightness": 0.0, "contrast": 0.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_model(recipe: Recipe, images: np.ndarray, seed: int, device: torch.device) -> nn.Module:
    """The same network the engine trains, built the same way (same initial weights)."""
    return build_classifier(
        recipe.model.name,
        recipe.model.args,
        image_shape=tuple(images.shape[1:]),  # type: ignore[arg-type]
        seed=seed,
        train_images=torch.from_numpy(images),
    ).to(device)


def _train_loop(
    network: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    recipe: Recipe,
    device: torch.device,
    warmup: int,
    steps_per_epoch: int = 1,
) -> tuple[int, float]:
    """Train on every batch; returns (images after the warm-up, seconds after the warm-up)."""
    optimizer = make_optimizer(network, recipe.optim, device)
    schedule = make_schedule(optimizer, recipe.optim, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    network.train()
    counted, started = 0, 0.0
    for step, (x, y) in enumerate(batches):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        with autocast(device):
            loss = loss_fn(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if step >= warmup:
            counted += len(y)
    _sync(device)
    return counted, time.perf_counter() - started


def plain_throughput(
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    device: torch.device,
    warmup: int,
    epochs: int = 1,
    augment: bool = False,
) -> tuple[float, nn.Module]:
    """Images/s of a plain loop over inputs converted once (the network alone, no wrapper).

    With `augment`, each batch is augmented as the engine does (the recipe's augmentation on the
    uint8 pixels, on the device) and converted to the network's input afterwards.
    """
    model = _plain_model(recipe, images, seed, device)
    transform = make_augment(recipe.optim.augment) if augment else None
    if transform is not None:
        return _augmented_throughput(model, transform, images, labels, recipe, seed, device, epochs)
    with torch.no_grad():
        inputs = torch.cat(
            [
                model.to_input(torch.from_numpy(chunk).to(device))
                for chunk in np.array_split(images, max(len(images) // 4096, 1))
            ]  # type: ignore[operator]
        )
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.from_numpy(labels.astype(np.int64)).to(device)
    batch = recipe.optim.batch_size
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator).to(device)
            for start in range(0, len(order) - batch + 1, batch):
                idx = order[start : start + batch]
                yield inputs[idx], targets[idx]

    counted, seconds = _train_loop(
        model.network,  # type: ignore[arg-type]
        batches(),
        recipe,
        device,
        warmup,
        steps_per_epoch=len(targets) // batch,
    )
    return counted / seconds, model


def _augmented_throughput(
    model: nn.Module,
    transform: BatchTransform,
    images: np.ndarray,
    labels: np.ndarray,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    epochs: int,
) -> tuple[float, nn.Module]:
    """`plain_throughput` with the recipe's augmentation on every batch, as the engine has it."""
    pixels = torch.from_numpy(images).to(device)  # (N, H, W, C) uint8
    targets = torch.from_numpy(labels.astype(np.int64)).to(device)
    batch = recipe.optim.batch_size
    order_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=order_generator).to(device)
            for start in range(0, len(order) - batch + 1, batch):
                idx = order[start : start + batch]
                x = transform(pixels[idx], augment_generator)  # (B, H, W, C) float, 0-255
                yield model.to_input(x), targets[idx]  # type: ignore[operator]

    counted, seconds = _train_loop(
        model.network,  # type: ignore[arg-type]
        batches(),
        recipe,
        device,
        0,
        steps_per_epoch=len(targets) // batch,
    )
    return counted / seconds, model


def engine_throughput(
    recipe: Recipe, images: np.ndarray, labels: np.ndarray, seed: int, device: torch.device
) -> float:
    """Images/s of the engine's loop, as a flow task runs it (one epoch)."""
    result = train_recipe(recipe.updated({"optim": {"epochs": 1}}), images, labels, seed, device)
    return len(images) / result.train_seconds


def loader_throughput(
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    device: torch.device,
    workers: int,
    warmup: int,
) -> float:
    """Images/s of PIL images through torchvision transforms in DataLoader worker processes."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    model = _plain_model(recipe, images, seed, device)
    aug = recipe.optim.augment
    side, channels = model.side, model.channels  # type: ignore[attr-defined]
    mean = model.mean.flatten().tolist()  # type: ignore[operator]
    std = model.std.flatten().tolist()  # type: ignore[operator]
    steps: list[Callable[..., object]] = []
    if channels == 3:
        steps.append(lambda image: image.convert("RGB"))
    steps += [
        transforms.Resize((side, side)),
        transforms.RandomAffine(
            degrees=aug.rotate_deg, translate=(aug.translate / side, aug.translate / side)
        ),
        transforms.ColorJitter(brightness=aug.brightness, contrast=aug.contrast),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    pipeline = transforms.Compose(steps)

    class PilDigits(Dataset[tuple[Tensor, int]]):
        def __init__(self) -> None:
            self.images = [
                Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                for image in images
            ]

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, index: int) -> tuple[Tensor, int]:
            return pipeline(self.images[index]), int(labels[index])  # type: ignore[return-value]

    loader = DataLoader(
        PilDigits(),
        batch_size=recipe.optim.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(device, non_blocking=True)

    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    counted, seconds = _train_loop(model.network, batches(), recipe, device, warmup)  # type: ignore[arg-type]
    return counted / seconds


def test_accuracy(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device
) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(device):
        for start in range(0, len(images), 2048):
            x = torch.from_numpy(images[start : start + 2048]).to(device)
            correct += int((model(x).argmax(1).cpu().numpy() == labels[start : start + 2048]).sum())
    return correct / len(images)


def stage_comparison(params: Params, params_path: Path, dataset: str, label: str) -> None:
    """The `train_zoo` flow on one model against the plain loop with the same recipe and epochs."""
    recipe = params.zoo.recipe(label)
    device = select_device(params.compute.device)
    arrays = load_arrays(
        dataset, params.data.root, params.zoo.train_subset, params.zoo.test_subset, params.seed
    )
    started = time.perf_counter()
    _, model = plain_throughput(
        recipe,
        arrays.train_images,
        arrays.train_labels,
        params.seed,
        device,
        warmup=0,
        epochs=recipe.optim.epochs,
        augment=True,
    )
    training_seconds = time.perf_counter() - started
    # What the flow's task does after training, timed as the loop is: the training and test sets
    # scored once, and the test set's changed copies (`digits.robustness`).
    test_accuracy(model, arrays.train_images, arrays.train_labels, device)
    plain_accuracy = test_accuracy(model, arrays.test_images, arrays.test_labels, device)
    changed = robustness_scores(
        model, arrays.test_images, arrays.test_labels, dataset, params.seed, device
    )
    plain_seconds = time.perf_counter() - started
    print(
        f"plain loop ({label}, {recipe.optim.epochs} epochs, augmentation as params): "
        f"{plain_seconds:.1f} s ({training_seconds:.1f} s training, "
        f"{plain_seconds - training_seconds:.1f} s scoring the training and test sets and "
        f"{len(changed) - 1} changed test sets), test accuracy {plain_accuracy:.4f}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load(params_path.read_text())
        raw["zoo"]["train"] = {dataset: [label]}
        raw["tracking"] = {**(raw.get("tracking") or {}), "uri": f"sqlite:///{tmp}/mlflow.db"}
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(raw))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.train_zoo",
                "--dataset",
                dataset,
                "--params",
                f"{tmp}/params.yaml",
                "--report-dir",
                f"{tmp}/report",
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        flow_seconds = time.perf_counter() - started
        rows = (Path(tmp) / "report" / "comparison.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    row = dict(zip(header, values, strict=True))
    print(
        f"train_zoo flow ({label}, {recipe.optim.epochs} epochs, augmentation as params): "
        f"{flow_seconds:.1f} s wall ({float(row['train_seconds']):.1f} s training), "
        f"test accuracy {float(row['accuracy']):.4f}"
    )
    print(f"flow / plain wall time: {flow_seconds / plain_seconds:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "svhn"])
    parser.add_argument("--models", default="lenet5", help="labels in params.yaml's zoo.models")
    parser.add_argument("--images", type=int, default=20000, help="training images per pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--loader-workers", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="batches not timed")
    parser.add_argument("--stage", action="store_true", help="also the whole flow vs plain loop")
    args = parser.parse_args()
    steady = steady_allocator()  # as the flow's process has it, before any thread starts

    params = load_params(args.params)
    device = select_device(args.device)
    arrays = load_arrays(args.dataset, params.data.root, args.images, None, params.seed)
    images, labels = arrays.train_images, arrays.train_labels
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"device: {device} ({where}), "
        f"torch {torch.__version__}, {args.dataset} ({len(images)} training images), "
        f"DataLoader workers: {args.loader_workers}, steady allocator: {steady}"
    )
    print(
        f"{'model':<10} {'batch':>5} {'plain':>9} {'engine':>9} {'+augment':>9} {'pil+loader':>10} "
        f"{'engine/plain':>12} {'engine/loader':>13}   (images/s)"
    )
    results = {}
    for label in args.models.split(","):
        recipe = params.zoo.recipe(label)
        plain, _ = plain_throughput(recipe, images, labels, params.seed, device, args.warmup)
        bare = engine_throughput(
            recipe.updated({"optim": {"augment": NO_AUGMENT}}), images, labels, params.seed, device
        )
        augmented = engine_throughput(recipe, images, labels, params.seed, device)
        loader = loader_throughput(
            recipe, images, labels, params.seed, device, args.loader_workers, args.warmup
        )
        results[label] = {
            "plain": plain,
            "engine": bare,
            "engine_augment": augmented,
            "pil_loader": loader,
        }
        print(
            f"{label:<10} {recipe.optim.batch_size:>5} {plain:>9.0f} {bare:>9.0f} "
            f"{augmented:>9.0f} {loader:>10.0f} "
            f"{augmented / plain:>12.2f} {augmented / loader:>13.2f}",
            flush=True,
        )
    print(json.dumps({"device": str(device), "results": results}))
    if args.stage:
        stage_comparison(params, Path(args.params), args.dataset, args.models.split(",")[0])


if __name__ == "__main__":
    main()
