"""The README's "Browse the runs", in headless Chromium, after a tiny run of the pipeline.

The Prefect server and the MLflow UI are started as `make prefect-ui` and `make ui` start them (on
free ports); the tuning and zoo flows run as `dvc repro` runs them (`python -m flows.<study>` in
the project folder), with no PREFECT_API_URL: they must find the server by themselves. Then the
browser finds the registered models with their scores and the champion alias in the MLflow UI,
follows a run's link to its Prefect flow run, and finds both flow runs completed in the Prefect
UI. Screenshots are kept in reports/screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.config import DataConfig
from digits.data import prepare, sources

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "reports" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLOWS = {"tune-mnist": "tiny-mlp", "train-zoo": "tiny-zoo-mnist-lenet5"}
SCORES = ("accuracy", "precision", "recall", "f1")
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[Any], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url} exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(
    command: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[Any]]:
    """Run a server in its own process group; stop the group afterwards."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _js_number(value: float) -> str:
    """A metric as the MLflow UI prints it (JavaScript's shortest round-trip form)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@pytest.fixture
def tiny_project(tmp_path: Path, fixture_mnist_mirror: tuple[Path, list]) -> Path:
    """A project folder: 200/50 MNIST-format images prepared, and a params file on them."""
    project = tmp_path / "project"
    mirror, resources = fixture_mnist_mirror
    data_cfg = DataConfig(root=project / "data", mirrors=[str(mirror)])
    sources.pull("mnist", data_cfg, resources=resources)
    prepare.prepare("mnist", data_cfg)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = "data"
    raw["compute"].update(device="cpu", cpu_workers=1, task_retries=0)
    raw["mnist"].update(folds=2, registered_model=FLOWS["tune-mnist"])
    raw["mnist"]["recipe"]["model"]["args"].update(width=16)
    raw["mnist"]["recipe"]["optim"].update(epochs=2, batch_size=64)
    raw["mnist"]["search"]["grid"]["model"] = {"activation": ["relu", "tanh"], "width": [16]}
    raw["zoo"].update(registered_model_prefix="tiny-zoo", train={"mnist": ["lenet5"]})
    raw["zoo"]["optim"].update(epochs=2, batch_size=64, eval_batch_size=256)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return project


def test_both_uis_show_the_runs_of_a_quick_pipeline(tiny_project: Path, tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: apt-get install chromium (.ci/run does)")
    mlflow_port, prefect_port = free_port(), free_port()
    ui_url = f"http://127.0.0.1:{mlflow_port}"
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["tracking"]["ui_url"] = ui_url
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # What `make prefect-ui` and `make study` share: the server's address, Prefect's own.
        "PREFECT_SERVER_API_PORT": str(prefect_port),
    }
    # `make prefect-ui`: the project's server over .prefect/prefect.db, held up while it runs.
    prefect_server = [sys.executable, "-m", "digits.edges.project_server", "ui"]
    prefect_server += ["--home", str(tiny_project / ".prefect")]
    prefect_server += ["--host", "127.0.0.1", "--port", str(prefect_port)]
    mlflow_ui = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri"]
    mlflow_ui += ["sqlite:///mlruns/mlflow.db", "--host", "127.0.0.1", "--port", str(mlflow_port)]
    mlflow_ui += ["--workers", "1"]
    server_env = env | {"PREFECT_HOME": str(tiny_project / ".prefect")}
    mlflow_env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    (tiny_project / "mlruns").mkdir()
    with (
        serving(prefect_server, server_env, tiny_project, tmp_path / "prefect.log") as prefect,
        serving(mlflow_ui, mlflow_env, tiny_project, tmp_path / "mlflow.log") as mlflow_process,
    ):
        _wait_healthy(
            f"http://127.0.0.1:{prefect_port}/api/health", prefect, tmp_path / "prefect.log", 180
        )
        for module, extra in (
            ("flows.tune_mnist", []),
            ("flows.train_zoo", ["--dataset", "mnist"]),
        ):
            done = subprocess.run(
                [sys.executable, "-m", module, "--params", "params.yaml", *extra],
                cwd=tiny_project,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-4000:]
            assert f"http://127.0.0.1:{prefect_port}/runs/flow-run/" in done.stderr
        _wait_healthy(f"{ui_url}/health", mlflow_process, tmp_path / "mlflow.log", 120)

        expected = _registry_facts(tiny_project)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        with (
            playwright_api.sync_playwright() as playwright,
            tempfile.TemporaryDirectory() as profile,
        ):
            browser = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1400, "height": 1600},
            )
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            playwright_api.expect.set_options(timeout=TIMEOUT_MS)
            _check_mlflow(page, playwright_api.expect, ui_url, expected, shots)
            _check_prefect(page, playwright_api.expect, prefect_port, expected, shots)
            browser.close()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy2(shot, SCREENSHOTS / shot.name)


def _registry_facts(project: Path) -> dict[str, dict[str, Any]]:
    """What the UIs must show, read from the store with MLflow's client."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project}/mlruns/mlflow.db"
    # Both URIs: an earlier test in this process may have set MLflow's global registry URI.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    facts = {}
    for model in FLOWS.values():
        version = client.get_model_version_by_alias(model, "champion")
        run = client.get_run(version.run_id)
        facts[model] = {
            "version": version.version,
            "run_name": run.info.run_name,
            "scores": {key: run.data.metrics[key] for key in SCORES},
            "prefect_url": run.data.tags["prefect_flow_run_url"],
            "version_prefect_url": version.tags["prefect_flow_run_url"],
        }
    return facts


def _tidy_mlflow(page: Any) -> None:
    """Close the first visit's pop-ups and switch from the GenAI view to "Model training"."""
    dialog = page.get_by_role("dialog")
    with contextlib.suppress(Exception):  # no announcement this time
        dialog.get_by_role("button", name="Close").click(timeout=5_000)
    page.get_by_role("button", name="Model training").click()
    assistant = page.get_by_role("button", name="Close")
    if assistant.count() == 1 and assistant.is_visible():
        assistant.click()


def _check_mlflow(
    page: Any, expect: Any, ui_url: str, facts: dict[str, dict[str, Any]], shots: Path
) -> None:
    page.goto(f"{ui_url}/#/models")
    _tidy_mlflow(page)
    for model in facts:
        row = page.get_by_role("row").filter(has_text=model)
        expect(row).to_contain_text("@ champion")
    page.screenshot(path=shots / "mlflow-registered-models.png", full_page=True)

    for model, fact in facts.items():
        # Models -> the champion version -> its source run: the test scores.
        page.goto(f"{ui_url}/#/models/{model}/versions/{fact['version']}")
        expect(page.get_by_text("@ champion").first).to_be_visible()
        page.get_by_role("link", name=fact["run_name"], exact=True).first.click()
        expect(page.get_by_text(re.compile(r"Metrics \(\d+\)"))).to_be_visible()
        text = page.inner_text("body")
        for key, value in fact["scores"].items():
            assert re.search(rf"(^|\n){key}\s*\n\s*{re.escape(_js_number(value))}\s*\n", text), (
                f"{model}: {key} {value} not on its run page"
            )
        assert fact["prefect_url"] in text  # the link to its Prefect flow run
        page.screenshot(path=shots / f"mlflow-run-{model}.png", full_page=True)


def _check_prefect(
    page: Any, expect: Any, port: int, facts: dict[str, dict[str, Any]], shots: Path
) -> None:
    page.goto(f"http://127.0.0.1:{port}/runs")
    for flow_name in FLOWS:
        run_row = page.locator(".state-list-item").filter(has_text=flow_name)
        expect(run_row).to_have_count(1)
        expect(run_row).to_contain_text("Completed")
    page.screenshot(path=shots / "prefect-flow-runs.png", full_page=True)

    # The MLflow run's link leads to its flow run, whose artifact links back to the version.
    mlp = facts[FLOWS["tune-mnist"]]
    assert mlp["version_prefect_url"] == mlp["prefect_url"]
    page.goto(mlp["prefect_url"])
    expect(page.get_by_text("tune-mnist").first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("mlflow-links").first.click()
    version_link = page.get_by_role("link", name=f"{FLOWS['tune-mnist']} v{mlp['version']}")
    expect(version_link).to_have_attribute(
        "href", re.compile(rf"/#/models/{FLOWS['tune-mnist']}/versions/{mlp['version']}$")
    )
    version_row = page.get_by_role("row").filter(has=version_link)
    expect(version_row).to_contain_text("champion")
    page.screenshot(path=shots / "prefect-mlflow-links.png", full_page=True)
