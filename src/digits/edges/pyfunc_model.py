"""The registered model's code: an MLflow "model from code", so nothing is pickled.

MLflow logs this file itself (not a pickled object) as the model, with two artifacts: the weights
as safetensors and the JSON spec of `digits.models.saved`. Loading the model runs this file, which
rebuilds the network from the spec through the model registry and fills in the weights. This is
the one file besides the `tracking` package that imports `mlflow`: MLflow's models-from-code
contract is that the file calls `mlflow.models.set_model` when it is run, so it cannot be a
function in `tracking/models.py`. For the same reason it does work when imported (one call);
nothing else imports it.

Input: raw uint8 pixels (N, H, W, C) shaped like the training images (MNIST N×28×28×1).
Output: a table with one row per image: `digit`, its `probability`, and `p0`…`p9`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class DigitClassifierModel(PythonModel):
    """A `digits.models.pixels.PixelClassifier` behind MLflow's pyfunc interface."""

    def load_context(self, context: PythonModelContext) -> None:
        from digits.models.saved import load_classifier, read_spec

        spec_path = Path(context.artifacts["spec"])
        self.model = load_classifier(Path(context.artifacts["weights"]), spec_path)
        self.spec, self.picture_format = read_spec(spec_path)

    # np.ndarray is a hint MLflow takes without inferring a schema from it: the schema comes from
    # the input example (uint8 N×H×W×C), which MLflow enforces before this is called.
    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """uint8 (N, H, W, C) pixels -> one row per image: digit, probability, p0…p9."""
        from digits.models.saved import classify, prediction_table

        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images.astype(np.float64)), 0, 255).astype(np.uint8)
        if images.ndim == 3 and self.spec.image_shape[-1] == 1:  # (N, H, W) grey
            images = images[..., None]
        return prediction_table(*classify(self.model, images))


mlflow.models.set_model(DigitClassifierModel())
