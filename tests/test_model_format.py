"""Registered models: safetensors and a JSON spec, loaded without pickle; `digits predict`."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from digits.config import TrackingConfig
from digits.edges import registry
from digits.edges.cli import main
from digits.edges.tracking import TrackingStore, open_tracking_store
from digits.errors import DigitsError
from digits.images import PictureFormat, image_files, picture_format, read_image
from digits.models import build_classifier
from digits.models.saved import classify, load_classifier, save_classifier

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SHAPE = (28, 28, 1)


def _mnist_like(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 28, 28, 1): a light blob on a dark background, as MNIST digits are."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, *SHAPE), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(4, 12, size=2)
        images[i, top : top + 12, left : left + 6, 0] = rng.integers(128, 256)
    return images


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, str]]:
    """A tiny MLP registered as `tiny@champion` in a store of its own; (model, store URI)."""
    root = tmp_path_factory.mktemp("store")
    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    images = _mnist_like(32)
    model = build_classifier("mlp", {"width": 8}, SHAPE, seed=0, train_images=images)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        opened = open_tracking_store(TrackingConfig(artifact_root=root / "artifacts"))
        run_id = opened.runs.create_run("unit", "final")
        opened.runs.log_run_metrics(run_id, {"accuracy": 0.5})
        tags = {"profile": "full", "test_set": "synthetic"}
        version = opened.models.register_model_in_run(run_id, model, "tiny", images[:4], tags)
        assert registry.promote_if_better(opened, "tiny", version).promoted
        yield model, uri
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


@pytest.fixture
def store(
    registered: tuple[torch.nn.Module, str], monkeypatch: pytest.MonkeyPatch
) -> TrackingStore:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered[1])
    return open_tracking_store(TrackingConfig())


def _forbid_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used to load a model")

    for module, names in (
        (pickle, ("load", "loads", "Unpickler")),
        (cloudpickle, ("load", "loads")),
        (torch, ("load",)),
    ):
        for name in names:
            monkeypatch.setattr(module, name, refuse)


def _probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return classify(model, images)[1]


# ------------------------------------------------------------------------------ the format


def test_saved_classifier_round_trips_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _mnist_like(16)
    model = build_classifier("lenet5", {}, SHAPE, seed=3, train_images=images)
    weights, spec = save_classifier(model, tmp_path / "saved", examples=images)
    content = json.loads(spec.read_text())
    assert content["background"] == "dark"
    assert content["ink_extent"] == pytest.approx(12 / 28, abs=0.01)  # the blobs are 12 high
    _forbid_pickle(monkeypatch)
    loaded = load_classifier(weights, spec)
    np.testing.assert_array_equal(_probabilities(loaded, images), _probabilities(model, images))


def test_a_pretrained_model_loads_offline_from_its_own_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    model = build_classifier(
        "resnet18", {"pretrained": False}, (32, 32, 3), seed=0, train_images=images
    )
    weights, spec = save_classifier(model, tmp_path / "saved")
    content = json.loads(spec.read_text())
    content["args"]["pretrained"] = True  # as a model fine-tuned from ImageNet weights says
    spec.write_text(json.dumps(content))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no ImageNet weights here
    loaded = load_classifier(weights, spec)
    np.testing.assert_allclose(
        _probabilities(loaded, images), _probabilities(model, images), rtol=1e-5, atol=1e-6
    )


def test_registered_model_loads_without_pickle(
    store: TrackingStore, registered: tuple[torch.nn.Module, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _mnist_like(5, seed=9)
    _forbid_pickle(monkeypatch)
    served, folder = store.models.load_model("tiny", "@champion")
    assert (folder / "artifacts" / "weights.safetensors").is_file()
    table = served.predict(images)
    expected = _probabilities(registered[0], images)
    assert list(table.columns[:2]) == ["digit", "probability"]
    np.testing.assert_array_equal(table["digit"], expected.argmax(axis=1))
    np.testing.assert_allclose(table[[f"p{k}" for k in range(10)]], expected, rtol=1e-6)
    signature = served.metadata.signature.inputs.to_dict()
    assert signature[0]["tensor-spec"] == {"dtype": "uint8", "shape": (-1, 28, 28, 1)}


def test_registering_writes_the_pins_without_scanning_every_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's check of the pins against the environment maps every installed distribution to
    its modules (seconds of every stage); the pins are the environment's own, so it is skipped,
    and they are still written with the model."""
    import importlib_metadata
    from mlflow.utils import requirements_utils

    scans: list[int] = []
    real_scan = importlib_metadata.packages_distributions
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # no earlier scan
    monkeypatch.setattr(
        importlib_metadata, "packages_distributions", lambda: scans.append(1) or real_scan()
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    opened = open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))
    images = _mnist_like(8)
    model = build_classifier("mlp", {"width": 8}, SHAPE, seed=0, train_images=images)
    run_id = opened.runs.create_run("unit", "final")
    version = opened.models.register_model_in_run(run_id, model, "pins", images[:2], {})
    assert scans == []
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/pins/{version}", tracking_uri=opened.uri
    )
    pins = (Path(folder) / "requirements.txt").read_text().splitlines()
    from importlib.metadata import version as installed

    assert f"torch=={installed('torch').split('+')[0]}" in pins


# ------------------------------------------------------------------------------ pictures


def test_a_dark_digit_on_white_colour_picture_becomes_an_mnist_image(tmp_path: Path) -> None:
    picture = np.full((300, 200, 3), 255, dtype=np.uint8)  # white paper, tall, colour
    picture[20:260, 80:120] = (20, 20, 200)  # a dark blue stroke, 240 high, off centre
    path = tmp_path / "one.png"
    Image.fromarray(picture).save(path)
    mnist = PictureFormat(SHAPE, "dark", ink_extent=20 / 28)
    pixels = read_image(path, mnist)
    assert pixels.shape == SHAPE and pixels.dtype == np.uint8
    assert pixels[0, 0, 0] == 0 and pixels[14, 14, 0] > 200  # inverted: light stroke on black
    rows = np.nonzero(pixels[..., 0].max(axis=1) > 64)[0]
    assert (rows.min(), rows.max()) == (4, 23)  # 20 of 28 pixels high, centred like MNIST's
    kept = read_image(path, mnist, invert="never")
    assert kept[0, 0, 0] == 255  # not inverted: paper stays white
    transparent = np.zeros((40, 40, 4), dtype=np.uint8)
    transparent[10:30, 18:22] = (0, 0, 0, 255)  # black ink, the rest transparent
    Image.fromarray(transparent, "RGBA").save(tmp_path / "ink.png")
    ink = read_image(tmp_path / "ink.png", PictureFormat((32, 32, 3), "unknown"))
    assert ink.shape == (32, 32, 3) and ink[0, 0].tolist() == [255, 255, 255]  # resized whole


def test_picture_format_of_training_images() -> None:
    mnist = _mnist_like(8)
    assert picture_format(mnist).background == "dark"
    assert picture_format(255 - mnist).background == "light"
    mixed = np.concatenate([mnist[:4], 255 - mnist[4:]])
    assert picture_format(mixed) == PictureFormat(SHAPE, "unknown", None)


def test_image_files_and_their_errors(tmp_path: Path) -> None:
    with pytest.raises(DigitsError, match="no PNG or JPEG files"):
        image_files(tmp_path)
    (tmp_path / "b.JPG").write_bytes(b"not an image")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPG"]
    with pytest.raises(DigitsError, match="not a readable PNG or JPEG"):
        read_image(tmp_path / "b.JPG", PictureFormat(SHAPE))
    with pytest.raises(DigitsError, match="no such file or folder"):
        image_files(tmp_path / "missing")


# ------------------------------------------------------------------------------ the command


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(PARAMS), *argv])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out.splitlines(), captured.err.splitlines()


def test_cli_predict_prints_digit_and_probability_per_image(
    store: TrackingStore,
    registered: tuple[torch.nn.Module, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = _mnist_like(3, seed=4)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, image in enumerate(images):  # as people draw them: dark ink on white, larger, RGB
        big = Image.fromarray(255 - image[..., 0]).resize((112, 112)).convert("RGB")
        big.save(folder / f"digit{i}.{'jpg' if i == 2 else 'png'}")
    code, out, err = _cli(capsys, "predict", "--model", "tiny@champion", str(folder))
    assert code == 0, err
    files = image_files(folder)
    fmt = picture_format(_mnist_like(32)[:4])  # what the registered model was given
    converted = np.stack([read_image(f, fmt) for f in files])
    digits, probabilities = classify(registered[0], converted)
    assert out == [
        f"{f!s:<{len(str(files[0]))}}  {d}  {probabilities[i, d]:.4f}"
        for i, (f, d) in enumerate(zip(files, digits, strict=True))
    ]


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("tiny@nobody", "cannot load model tiny@nobody"),
        ("tiny/7", "cannot load model tiny/7"),
        ("tiny", "give it as name@alias"),
        ("tiny@latest", "give an alias"),
    ],
)
def test_cli_predict_bad_model_is_one_line(
    store: TrackingStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reference: str,
    message: str,
) -> None:
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "zero.png")
    code, _, err = _cli(capsys, "predict", "--model", reference, str(tmp_path / "zero.png"))
    assert code == 2 and len(err) == 1 and message in err[0], err


# ------------------------------------------------------------------------------ MLflow's own tools


def _mlflow_env(uri: str) -> dict[str, str]:
    """The environment for MLflow's CLI: this store, and this venv's tools (uvicorn) on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_mlflow_models_serve_answers_http_requests_for_raw_images(
    registered: tuple[torch.nn.Module, str], tmp_path: Path
) -> None:
    images = _mnist_like(4, seed=11)
    expected = _probabilities(registered[0], images)
    port = _free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_cli, "models", "serve", "-m", "models:/tiny@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        command,
        env=_mlflow_env(registered[1]),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn worker is stopped with it
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the model server did not start in 120 s"
            time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            predictions = json.loads(reply.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert [row["digit"] for row in predictions] == expected.argmax(axis=1).tolist()
    served = np.array([[row[f"p{k}"] for k in range(10)] for row in predictions])
    np.testing.assert_allclose(served, expected, rtol=1e-5)


@pytest.mark.slow
def test_mlflow_models_predict_answers_for_a_batch(
    registered: tuple[torch.nn.Module, str], tmp_path: Path
) -> None:
    images = _mnist_like(3, seed=12)
    (tmp_path / "input.json").write_text(json.dumps({"inputs": images.tolist()}))
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_cli, "models", "predict", "-m", "models:/tiny@champion"]
    command += ["--env-manager", "local", "-t", "json"]
    command += ["-i", str(tmp_path / "input.json"), "-o", str(tmp_path / "out.json")]
    done = subprocess.run(
        command,
        env=_mlflow_env(registered[1]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert [row["digit"] for row in predictions] == (
        _probabilities(registered[0], images).argmax(axis=1).tolist()
    )
