"""A trained `PixelClassifier` as two plain files, read back without pickle.

* `weights.safetensors`: every parameter and buffer (the normalisation constants included), in the
  safetensors format, which holds tensors and nothing that can run code;
* `spec.json`: the registered architecture's name and arguments, the image shape it was trained on,
  and what `digits predict` needs to convert an arbitrary picture into such an image.

Loading builds the network again through the model registry (`digits.models.build_network`) and
fills in the weights, so a saved model is only ever data. This is the format of every registered
model (see `digits.edges.pyfunc_model`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from digits.errors import DigitsError
from digits.files import atomic_target, write_text_atomic
from digits.images import PictureFormat, picture_format
from digits.models import build_network, model_entry, parse_args
from digits.models.pixels import ClassifierSpec, PixelClassifier

FORMAT = "digits-pixel-classifier/1"
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"


def save_classifier(
    model: nn.Module, directory: Path, examples: np.ndarray | None = None
) -> tuple[Path, Path]:
    """Write `model`'s weights and spec into `directory`.

    Args:
        model: A `PixelClassifier` made by `digits.models.build_classifier` (it carries its spec).
        directory: Created if missing.
        examples: A few uint8 (N, H, W, C) images it was trained on, from which the spec records
            their background ("dark" for MNIST) and the digit's size in them, so a picture can
            be brought to the same (`digits.images.PictureFormat`).

    Returns:
        (weights path, spec path).

    Raises:
        ValueError: `model` was not made by `build_classifier` (a programming error).
    """
    if not isinstance(model, PixelClassifier) or model.spec is None:
        raise ValueError("only a PixelClassifier made by build_classifier can be saved")
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    spec = directory / SPEC_FILE
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_target(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    content: dict[str, Any] = {"format": FORMAT, **asdict(model.spec)}
    if examples is not None:
        fmt = picture_format(np.asarray(examples))
        content |= {"background": fmt.background, "ink_extent": fmt.ink_extent}
    write_text_atomic(spec, json.dumps(content, indent=2) + "\n")
    return weights, spec


def read_spec(path: Path) -> tuple[ClassifierSpec, PictureFormat]:
    """The spec in `path`, and what the images the model was trained on look like.

    Raises:
        DigitsError: the file is not a spec of this format.
    """
    try:
        content = json.loads(path.read_text())
        if content.get("format") != FORMAT:
            raise ValueError(f"format {content.get('format')!r}, expected {FORMAT!r}")
        spec = ClassifierSpec(
            model=content["model"],
            args=dict(content["args"]),
            image_shape=tuple(content["image_shape"]),
            channels=int(content["channels"]),
            side=int(content["side"]),
            num_classes=int(content["num_classes"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DigitsError(f"{path} is not a saved digits model spec: {error}") from None
    extent = content.get("ink_extent")
    fmt = PictureFormat(
        spec.image_shape,
        content.get("background", "unknown"),
        None if extent is None else float(extent),
    )
    return spec, fmt


def load_classifier(weights: Path, spec_path: Path) -> PixelClassifier:
    """Build the spec's architecture again and fill in the weights (no pickle anywhere).

    Pretrained weights are not fetched again: the saved weights replace them.

    Raises:
        DigitsError: the spec names an unknown model or bad arguments, or the weights do not fit.
    """
    spec, _ = read_spec(spec_path)
    entry = model_entry(spec.model)
    args = parse_args(spec.model, spec.args)
    if entry.pretrained(args):
        args = args.model_copy(update={"pretrained": False})
    network = build_network(
        spec.model, args.model_dump(), spec.channels, spec.side, spec.num_classes
    )
    placeholder = [0.0] * spec.channels  # normalisation constants come with the weights
    model = PixelClassifier(network, spec.channels, spec.side, placeholder, placeholder, spec=spec)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (OSError, RuntimeError) as error:
        raise DigitsError(f"weights {weights} do not fit model {spec.model}: {error}") from None
    return model.eval()


def classify(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted digit and class probabilities of uint8 images (N, H, W, C).

    Returns:
        (digits (N,) int64, probabilities (N, classes) float32).
    """
    model.eval()
    with torch.inference_mode():
        logits = model(torch.as_tensor(np.ascontiguousarray(images)))  # (N, classes)
        probabilities = torch.softmax(logits.float(), dim=1)
    return probabilities.argmax(dim=1).numpy(), probabilities.numpy()


def prediction_table(digits: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per image: `digit`, its `probability`, and `p0`…`p<classes-1>`.

    This is what a registered model returns (`mlflow models predict`, `mlflow models serve`).
    """
    table = pd.DataFrame({"digit": np.asarray(digits, dtype=np.int64)})
    rows = np.arange(len(table))
    table["probability"] = probabilities[rows, table["digit"].to_numpy()].astype(np.float64)
    for k in range(probabilities.shape[1]):
        table[f"p{k}"] = probabilities[:, k].astype(np.float64)
    return table
