"""The team services across hosts: network namespaces stand in for machines.

One namespace holds PostgreSQL, the S3 store, MLflow, Prefect and the Dask scheduler; two others
hold one Dask worker each. They share the file system (the workers read the flow's prepared
data by path; the code is the installed package), nothing else but the network. Needs root and
`ip`; PostgreSQL's server is installed by `make test` (skipped, with the reason, without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from digits.config import DataConfig
from digits.data import prepare, sources

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip(8) is not installed (apt-get install iproute2)"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "PostgreSQL's server is not installed (make test installs it as root)"
    return None


@dataclass(frozen=True)
class Hosts:
    """The namespaces and their addresses; `run` runs a command in one of them."""

    server: str
    workers: tuple[str, ...]
    server_ip: str
    worker_ips: tuple[str, ...]
    project: Path

    def run(
        self, namespace: str, args: list[str], timeout: float = 300, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=kwargs.pop("cwd", self.project),
            env={**_env(), **kwargs.pop("env", {})},  # type: ignore[dict-item]
            **kwargs,  # type: ignore[call-overload]
        )

    def team(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run(self.server, [sys.executable, "-m", "digits.edges.team", *args], timeout)


def _env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "PREFECT_", "DASK_", "DIGITS_"))
    }
    env.update(
        PYTHONPATH=f"{REPO / 'src'}:{REPO}",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def _namespaces(tag: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple[str, ...]]]:
    """A server namespace joined to two worker namespaces by veth pairs (10.<n>.<i>.1 / .2)."""
    server, workers = f"{tag}s", (f"{tag}w1", f"{tag}w2")
    subnet = 200 + os.getpid() % 50
    made: list[str] = []
    try:
        for namespace in (server, *workers):
            _sh("ip", "netns", "add", namespace)
            made.append(namespace)
            _sh("ip", "-n", namespace, "link", "set", "lo", "up")
        worker_ips = []
        for index, worker in enumerate(workers, 1):
            near, far = f"{tag}a{index}", f"{tag}b{index}"
            _sh(
                "ip",
                "link",
                "add",
                near,
                "netns",
                server,
                "type",
                "veth",
                "peer",
                far,
                "netns",
                worker,
            )
            _sh("ip", "-n", server, "addr", "add", f"10.{subnet}.{index}.1/24", "dev", near)
            _sh("ip", "-n", worker, "addr", "add", f"10.{subnet}.{index}.2/24", "dev", far)
            _sh("ip", "-n", server, "link", "set", near, "up")
            _sh("ip", "-n", worker, "link", "set", far, "up")
            _sh("ip", "-n", worker, "route", "add", "default", "via", f"10.{subnet}.{index}.1")
            worker_ips.append(f"10.{subnet}.{index}.2")
        yield server, workers, f"10.{subnet}.1.1", tuple(worker_ips)
    finally:
        for namespace in reversed(made):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def _tiny_project(project: Path, mirror: Path, resources: list) -> Path:
    """Prepared tiny MNIST-format data and a params file, under `project`."""
    data_cfg = DataConfig(root=project / "data", mirrors=[str(mirror)])
    sources.pull("mnist", data_cfg, resources=resources)
    prepare.prepare("mnist", data_cfg)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(data_cfg.root)
    raw["compute"].update(device="cpu", task_retries=1, retry_delay_s=0)
    raw["mnist"].update(folds=2, registered_model="team-mlp")
    raw["mnist"]["refine"]["enabled"] = False  # the refining search: not what these tests are about
    raw["mnist"]["recipe"]["model"]["args"].update(width=8)
    raw["mnist"]["recipe"]["optim"].update(epochs=1, batch_size=64)
    raw["mnist"]["search"]["grid"]["model"] = {"activation": ["relu", "tanh"], "width": [8]}
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def team() -> Iterator[Hosts]:
    """The team services up in the server namespace, a Dask worker in each worker namespace."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # Not under pytest's folder, which user postgres (the database server's) cannot enter.
    project = Path(tempfile.mkdtemp(prefix="digits-team-"))
    project.chmod(0o711)
    workers: list[subprocess.Popen[bytes]] = []
    with _namespaces(f"d{os.getpid() % 100000}") as (server, names, server_ip, worker_ips):
        hosts = Hosts(server, names, server_ip, worker_ips, project)
        try:
            started = hosts.team("up", "--host", server_ip)
            assert started.returncode == 0, started.stderr + started.stdout
            for name, ip in zip(names, worker_ips, strict=True):
                log = open(project / f"worker-{name}.log", "wb")  # noqa: SIM115 (the worker's)
                command = [sys.executable, "-m", "digits.edges.team", "worker", "--listen-host", ip]
                # The worker's host has no copy of the flow's data/: an empty folder is mounted
                # over it in a mount namespace of the worker's own.
                hide_data = f"mkdir -p {project / 'data'} && mount -t tmpfs none {project / 'data'}"
                script = f'{hide_data} && exec "$@"'
                workers.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            name,
                            "unshare",
                            "-m",
                            "sh",
                            "-c",
                            script,
                            "sh",
                            *command,
                        ],
                        cwd=project,
                        env=_env(),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            yield hosts
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, 15)
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=20)
            hosts.team("down", timeout=120)
            shutil.rmtree(project, ignore_errors=True)


def _wait_workers(hosts: Hosts, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = [hosts.project / f"worker-{name}.log" for name in hosts.workers]
        if sum("Registered to" in log.read_text(errors="replace") for log in logs) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} workers registered within {timeout_s} s")


def _registry(
    hosts: Hosts, experiment: str = "digits-mnist", model: str = "team-mlp"
) -> dict[str, object]:
    """The team registry seen by the admin from the server's namespace: versions and runs."""
    script = (
        "import json, sys; from mlflow.tracking import MlflowClient; c = MlflowClient(); "
        "e = c.get_experiment_by_name(sys.argv[1]); "
        "runs = c.search_runs([e.experiment_id]) if e else []; "
        "versions = c.search_model_versions(f\"name='{sys.argv[2]}'\"); "
        "print(json.dumps({'runs': [r.info.run_name for r in runs], "
        "'finished': [r.info.status for r in runs], 'versions': [v.version for v in versions], "
        "'users': sorted({r.info.user_id for r in runs}), "
        "'run_users': [[r.info.run_name, r.info.user_id] for r in runs], "
        "'version_runs': [v.run_id for v in versions]}))"
    )
    client = _client_env(hosts)
    done = hosts.run(hosts.server, [sys.executable, "-c", script, experiment, model], env=client)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _client_env(hosts: Hosts, path: Path | None = None) -> dict[str, str]:
    from digits.edges.services import Project, read_client_file

    return read_client_file(path or hosts.project / ".team" / "client.env", Project(hosts.project))


def test_team_services_are_up_and_bound_to_the_server_address(team: Hosts) -> None:
    status = team.team("status")
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    assert len(lines) == 5 and all(f"up    {team.server_ip}:" in line for line in lines), lines
    # A second `up` finds every service up and starts nothing.
    again = team.team("up")
    assert again.returncode == 0 and again.stdout.count("already up") == 5, again.stdout
    # Room for many recorders at once: MLflow's pools sized to its request threads, and
    # PostgreSQL's connections to hold them all (the default pool failed at 64 recorders).
    from digits.edges.team.layout import load_layout
    from digits.edges.team.stack import (
        MLFLOW_POOL,
        MLFLOW_POOL_OVERFLOW,
        POSTGRES_CONNECTIONS,
        _psql,
        service_pid,
        services,
    )

    layout = load_layout(team.project / ".team")
    assert layout is not None
    assert _psql(layout, "show max_connections") == str(POSTGRES_CONNECTIONS)
    [mlflow] = [service for service in services() if service.name == "mlflow"]
    pid = service_pid(layout, mlflow)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE={MLFLOW_POOL}".encode() in environ
    assert f"MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW={MLFLOW_POOL_OVERFLOW}".encode() in environ


def _flow(hosts: Hosts, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    params = _tiny_project_once(hosts)
    command = [sys.executable, "-m", "flows.tune_mnist", "--params", str(params)]
    return hosts.run(hosts.server, command, env={"DIGITS_SERVICES": "team", **extra_env})


def _tiny_project_once(hosts: Hosts) -> Path:
    params = hosts.project / "params.yaml"
    if not params.is_file():
        from tests.conftest import fixture_resources

        from digits.data import synthetic

        mirror = hosts.project / "mirror"
        synthetic.write_mnist_idx(mirror / "mnist", 200, 50, seed=1)
        _tiny_project(hosts.project, mirror, fixture_resources(mirror / "mnist"))
    return params


def test_a_client_without_credentials_is_refused_and_writes_nothing(team: Hosts) -> None:
    _tiny_project_once(team)
    before = _registry(team)
    wrong = _flow(team, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert wrong.returncode == 2
    message = wrong.stderr.strip().splitlines()
    assert len(message) == 1 and "refused admin (HTTP 401)" in message[0], wrong.stderr
    bare = team.project / "bare.env"
    settings = _client_env(team)
    lines = [f"{k}={v}" for k, v in settings.items() if not k.startswith("MLFLOW_TRACKING_USER")]
    lines = [line for line in lines if not line.startswith("MLFLOW_TRACKING_PASSWORD")]
    bare.write_text("\n".join(lines) + "\n")
    missing = _flow(team, {"DIGITS_TEAM_CLIENT": str(bare)})
    assert missing.returncode == 2
    assert "needs credentials: set MLFLOW_TRACKING_USERNAME" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (team.project / "reports").exists()
    assert _registry(team) == before


def test_workers_in_other_namespaces_train_and_the_model_reaches_the_team_registry(
    team: Hosts,
) -> None:
    _wait_workers(team, 2)
    added = team.team("add-user", "alice")
    assert added.returncode == 0, added.stderr
    alice = _client_env(team, team.project / ".team" / "users" / "alice.env")
    credentials = {k: v for k, v in alice.items() if k.startswith("MLFLOW_TRACKING_")}
    done = _flow(team, credentials)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = _registry(team)
    # The sweep, its 2 trials and the final fit: every run finished, recorded as alice.
    assert len(seen["runs"]) == 4 and set(seen["finished"]) == {"FINISHED"}, seen  # type: ignore[arg-type]
    assert seen["versions"] == ["1"], seen
    assert seen["users"] == ["alice"], seen["run_users"]
    trained_on = [
        name
        for name in team.workers
        if "epoch 1/1" in (team.project / f"worker-{name}.log").read_text(errors="replace")
    ]
    assert trained_on, "no task ran on a worker in another namespace"
    # Each worker host presented a certificate of its own, issued by `team worker` on the spot.
    certs = team.project / ".team" / "certs"
    for ip in team.worker_ips:
        assert (certs / "hosts" / ip / "worker.pem").is_file(), sorted(certs.rglob("*.pem"))


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_dvc_pushes_and_pulls_raw_and_prepared_data_through_the_team_s3_store(
    team: Hosts,
) -> None:
    _tiny_project_once(team)
    repo = team.project / "dvc-checkout"
    repo.mkdir()
    shutil.copytree(team.project / "data", repo / "data")
    original = _tree_digest(repo / "data")
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args: str) -> str:
        done = team.run(team.server, list(args), cwd=repo)
        assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"
        return done.stdout

    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    run(*dvc, "add", "-q", "data/raw/mnist", "data/prepared/mnist")
    state = str(team.project / ".team")
    run(sys.executable, "-m", "digits.edges.team", "--state", state, "dvc-remote")
    assert "secret_access_key" not in (repo / ".dvc" / "config").read_text()
    run(*dvc, "push", "-r", "team")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "raw" / "mnist")
    shutil.rmtree(repo / "data" / "prepared" / "mnist")
    run(*dvc, "pull", "-r", "team")
    pulled = {k: v for k, v in _tree_digest(repo / "data").items() if k in original}
    assert pulled == original
    assert any(k.startswith("raw/") for k in pulled) and any(
        k.startswith("prepared/") for k in pulled
    )


def _study(hosts: Hosts, tag: str, activations: list[str], experiment_prefix: str = "") -> Path:
    """A checkout of its own for one study (params, the admin's client file and the
    certificates), so parallel flows each clear and write only their own models/ and reports/."""
    checkout = hosts.project / tag
    (checkout / ".team").mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(_tiny_project_once(hosts).read_text())
    raw["tracking"]["experiment_prefix"] = experiment_prefix or tag
    raw["mnist"]["registered_model"] = f"{experiment_prefix or tag}-mlp"
    raw["mnist"]["search"]["grid"]["model"] = {"activation": activations, "width": [8]}
    (checkout / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(hosts.project / ".team" / "client.env", checkout / ".team" / "client.env")
    with contextlib.suppress(FileExistsError):
        (checkout / ".team" / "certs").symlink_to(hosts.project / ".team" / "certs")
    return checkout


def _start_flow(hosts: Hosts, checkout: Path, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    command = ["ip", "netns", "exec", hosts.server, sys.executable, "-m", "flows.tune_mnist"]
    return subprocess.Popen(
        [*command, "--params", str(checkout / "params.yaml")],
        cwd=checkout,
        env={**_env(), "DIGITS_SERVICES": "team", **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(flow: subprocess.Popen[str], timeout_s: float = 300) -> tuple[int, str]:
    try:
        _, err = flow.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        flow.kill()
        _, err = flow.communicate()
    return flow.returncode, err


def _fits_trained(hosts: Hosts) -> int:
    logs = [hosts.project / f"worker-{name}.log" for name in hosts.workers]
    return sum(log.read_text(errors="replace").count("epoch 1/") for log in logs)


def _user(hosts: Hosts, name: str) -> dict[str, str]:
    added = hosts.team("add-user", name)
    assert added.returncode == 0, added.stderr
    env = _client_env(hosts, hosts.project / ".team" / "users" / f"{name}.env")
    return {k: v for k, v in env.items() if k.startswith("MLFLOW_TRACKING_")}


def _postgres(hosts: Hosts, action: str) -> None:
    data = hosts.project / ".team" / "postgres" / "data"
    from digits.edges.team.stack import postgres_bin

    command = ["runuser", "-u", "postgres", "--", postgres_bin("pg_ctl"), "-D", str(data)]
    done = subprocess.run([*command, "-m", "fast", "-w", action], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


OUTAGE_S = 10.0


def test_a_sweep_survives_postgres_stopped_for_ten_seconds_in_its_middle(team: Hosts) -> None:
    _wait_workers(team, 2)
    checkout = _study(team, "outage", ["relu", "tanh", "sigmoid"])
    before = _fits_trained(team)
    flow = _start_flow(team, checkout, {})
    try:
        deadline = time.monotonic() + 180
        while _fits_trained(team) == before and flow.poll() is None:
            assert time.monotonic() < deadline, "no fit trained within 180 s"
            time.sleep(0.2)
        assert flow.poll() is None, "the sweep ended before the outage could fall inside it"
        _postgres(team, "stop")
        time.sleep(OUTAGE_S)
        assert flow.poll() is None, _finish(flow)[1][-3000:]
        restarted = team.team("up")
        assert restarted.returncode == 0, restarted.stderr
    finally:
        code, err = _finish(flow)
    assert code == 0, err[-3000:]
    seen = _registry(team, "outage-mnist", "outage-mlp")
    runs: list[str] = seen["runs"]  # type: ignore[assignment]
    # The sweep, its 3 trials and the final fit, each recorded once and finished.
    assert len(runs) == 5 and len(set(runs)) == 5, seen
    assert set(seen["finished"]) == {"FINISHED"}, seen  # type: ignore[arg-type]
    assert seen["versions"] == ["1"], seen


def test_two_users_sweep_at_once_into_one_registered_model(team: Hosts) -> None:
    _wait_workers(team, 2)
    users = {name: _user(team, name) for name in ("bob", "carol")}
    flows = {
        name: _start_flow(team, _study(team, name, ["relu", "tanh"], "shared"), env)
        for name, env in users.items()
    }
    results = {name: _finish(flow) for name, flow in flows.items()}
    for name, (code, err) in results.items():
        assert code == 0, f"{name}: {err[-3000:]}"
    seen = _registry(team, "shared-mnist", "shared-mlp")
    runs: list[str] = seen["runs"]  # type: ignore[assignment]
    # Each user's sweep, its 2 trials and its final fit: 8 runs, each finished, 4 per user.
    assert len(runs) == 8 and set(seen["finished"]) == {"FINISHED"}, seen  # type: ignore[arg-type]
    assert seen["users"] == ["bob", "carol"], seen["run_users"]
    users_of_runs = [user for _, user in seen["run_users"]]  # type: ignore[attr-defined]
    assert users_of_runs.count("bob") == users_of_runs.count("carol") == 4, seen["run_users"]
    assert sorted(seen["versions"]) == ["1", "2"], seen  # type: ignore[type-var]
    assert len(set(seen["version_runs"])) == 2, seen  # type: ignore[arg-type]


# --------------------------------------------------------------- runs started from the Prefect UI

DEPLOYED_OVERRIDES = {
    "seed": 7,  # the tiny project's params say 0
    "mnist.search.grid.model": {"activation": ["sigmoid"], "width": [8]},
    "mnist.registered_model": "deployed-mlp",
    "tracking.experiment_prefix": "deployed",
}


@contextlib.contextmanager
def _pool_worker(hosts: Hosts) -> Iterator[Path]:
    """`pool-worker` in the server's namespace, in the project (a git checkout of its params)."""
    from digits.edges.team.daemons import stop_pid

    project = hosts.project
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    if not (project / ".git").is_dir():
        steps = (["init", "-q"], ["add", "params.yaml", "prefect.yaml"], ["commit", "-qm", "p"])
        for args in steps:
            subprocess.run([*git, *args], check=True, capture_output=True)
    log_path = project / "pool-worker.log"
    command = [sys.executable, "-m", "digits.edges.team", "pool-worker", "--name", "server"]
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            ["ip", "netns", "exec", hosts.server, *command],
            cwd=project,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Worker 'server' started" not in log_path.read_text(errors="replace"):
            assert worker.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the pool worker did not start in 180 s"
            time.sleep(0.5)
        yield log_path
    finally:
        stop_pid(worker.pid)  # an idle Prefect worker ignores one SIGTERM: stop_pid sends two


# What the UI's "Run" button does: a flow run of the deployment, made through Prefect's API, with
# the form's parameters; then its state, polled until final.
START_FROM_DEPLOYMENT = """
import json, sys, time
from prefect import get_client
from prefect.deployments import run_deployment
run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=0)
with get_client(sync_client=True) as client:
    deadline = time.monotonic() + float(sys.argv[3])
    while not (state := client.read_flow_run(run.id).state).is_final():
        assert time.monotonic() < deadline, f"flow run {run.id} still {state.name}"
        time.sleep(1)
print(json.dumps({"id": str(run.id), "state": state.name, "message": state.message}))
"""


def test_a_run_started_from_a_deployment_runs_on_the_pool_worker_with_its_overrides(
    team: Hosts,
) -> None:
    from digits.data.arrays import prepared_checksum

    _wait_workers(team, 2)
    _tiny_project_once(team)
    with _pool_worker(team) as log:
        parameters = json.dumps({"overrides": DEPLOYED_OVERRIDES})
        script = [sys.executable, "-c", START_FROM_DEPLOYMENT, "tune-mnist-deployed/tune-mnist"]
        client = {**_client_env(team), "PREFECT_HOME": str(team.project / ".prefect-client")}
        done = team.run(team.server, [*script, parameters, "240"], env=client, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + log.read_text()[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["state"] == "Completed", (state, log.read_text()[-3000:])
    assert f"submitting flow run '{state['id']}'" in log.read_text()  # the pool worker ran it
    script = (
        "import json; from mlflow.tracking import MlflowClient; c = MlflowClient(); "
        "e = c.get_experiment_by_name('deployed-mnist'); "
        "print(json.dumps([[r.info.run_name, r.data.params, r.data.tags] "
        "for r in c.search_runs([e.experiment_id])]))"
    )
    read = team.run(team.server, [sys.executable, "-c", script], env=_client_env(team))
    assert read.returncode == 0, read.stderr
    runs = json.loads(read.stdout.strip().splitlines()[-1])
    sweep = [(params, tags) for name, params, tags in runs if name.startswith("sweep-")]
    assert len(sweep) == 1 and len(runs) == 3, [name for name, _, _ in runs]  # sweep, trial, fit
    params, tags = sweep[0]
    assert params["seed"] == "7"  # the override, not the params file's
    commit = subprocess.run(
        ["git", "-C", str(team.project), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert tags["git_commit"] == commit and tags["git_dirty"] == "false", tags
    assert tags["data_checksum"] == prepared_checksum("mnist", team.project / "data")
    assert "seed=7" in tags["params_overrides"].split("; "), tags
    for _, _, run_tags in runs:  # every run of the study carries the same provenance
        assert run_tags["params_overrides"] == tags["params_overrides"]
        assert run_tags["git_commit"] == commit


# ------------------------------------------------------------- a registered model served by MLflow

SERVE_AND_ASK = """
import json, sys, time, urllib.request
import mlflow, numpy as np
port, model, images = int(sys.argv[1]), sys.argv[2], np.load(sys.argv[3])[:16]
deadline = time.monotonic() + 150
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
            break
    except OSError:
        assert time.monotonic() < deadline, "the model server did not answer in 150 s"
        time.sleep(0.5)
request = urllib.request.Request(
    f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as reply:
    served = [row["digit"] for row in json.loads(reply.read())["predictions"]]
in_process = mlflow.pyfunc.load_model(model).predict(images)["digit"].tolist()
print(json.dumps({"served": served, "in_process": in_process}))
"""


def _serve(hosts: Hosts, model: str, credentials: dict[str, str]) -> subprocess.Popen[bytes]:
    """`mlflow models serve` of `model` from the team registry, in the server's namespace."""
    bin_dir = str(Path(sys.executable).parent)  # the server starts this environment's uvicorn
    command = [f"{bin_dir}/mlflow", "models", "serve", "-m", model, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", "5301"]
    env = {**_env(), **credentials, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = _client_env(hosts)["MLFLOW_TRACKING_URI"]
    return subprocess.Popen(
        ["ip", "netns", "exec", hosts.server, *command],
        cwd=hosts.project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn worker is stopped with it
    )


def test_a_model_of_the_team_registry_answers_through_mlflow_models_serve(team: Hosts) -> None:
    from digits.edges.team.daemons import stop_pid

    if not _registry(team)["versions"]:  # run alone: the sweep test registers team-mlp first
        assert _flow(team, {}).returncode == 0
    model = "models:/team-mlp/1"
    dave = _user(team, "dave")
    refused = _serve(team, model, {**dave, "MLFLOW_TRACKING_PASSWORD": "wrong"})
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode != 0 and b"401" in output, output[-2000:]
    server = _serve(team, model, dave)
    try:
        images = team.project / "data" / "prepared" / "mnist" / "test_images.npy"
        ask = [sys.executable, "-c", SERVE_AND_ASK, "5301", model, str(images)]
        done = team.run(team.server, ask, env={**_client_env(team), **dave}, timeout=240)
    finally:
        stop_pid(server.pid)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers["served"]) == 16 and answers["served"] == answers["in_process"], answers


# ----------------------------------------------------------------- the UIs in a browser, logged in

RECORD_AS_USER = """
import json, sys
from mlflow.tracking import MlflowClient
from prefect import flow
experiment, model, flow_name = sys.argv[1:4]
def flow_run_name():
    from prefect.runtime import flow_run
    return flow_run.name
flow_run = flow(name=flow_name)(flow_run_name)()
client = MlflowClient()
run = client.create_run(client.create_experiment(experiment), run_name="browse-run")
client.log_param(run.info.run_id, "width", 8)
client.log_metric(run.info.run_id, "accuracy", 0.875)
client.log_text(run.info.run_id, "the model's files stand in here", "model/README.txt")
client.set_terminated(run.info.run_id)
client.create_registered_model(model)
version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
print(json.dumps({"experiment_id": run.info.experiment_id, "version": version.version,
                  "flow_run": flow_run}))
"""

BROWSE_LOGGED_IN = """
import contextlib, json, os, sys
from playwright.sync_api import Error, expect, sync_playwright
chromium, shots, experiment_id, model, version, flow_name = sys.argv[1:7]
mlflow_url = os.environ["MLFLOW_TRACKING_URI"]
user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
prefect_url = os.environ["PREFECT_API_URL"].removesuffix("/api")
seen = {"refused": {}, "refused_requests": []}
def note_refusal(response):
    if response.status == 403 or response.status >= 500:
        seen["refused_requests"].append([response.status, response.url, response.text()[:100]])
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True
    )
    expect.set_options(timeout=60_000)
    wrong = {"username": user, "password": password + "-wrong"}
    for name, credentials in (("no password", None), ("wrong password", wrong)):
        page = browser.new_context(http_credentials=credentials).new_page()
        try:
            response = page.goto(mlflow_url + "/")
            seen["refused"][name] = [response.status, page.inner_text("body")[:80]]
        except Error as error:  # no credentials at all: Chromium shows its own error page
            seen["refused"][name] = [str(error).splitlines()[0]]
    viewport = {"width": 1400, "height": 1000}
    context = browser.new_context(
        http_credentials={"username": user, "password": password}, viewport=viewport
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("response", note_refusal)
    page.goto(f"{mlflow_url}/#/experiments/{experiment_id}/runs")
    with contextlib.suppress(Error):  # a first visit's announcement
        page.get_by_role("dialog").get_by_role("button", name="Close").click(timeout=5_000)
    table = page.get_by_text("1 matching run").or_(page.get_by_text("Request error"))
    expect(table.first).to_be_visible()
    page.screenshot(path=f"{shots}/team-mlflow-runs.png")
    seen["runs_page"] = page.inner_text("body")
    if "Request error" not in seen["runs_page"]:
        page.get_by_role("link", name="browse-run").click()
        expect(page.get_by_text("0.875").first).to_be_visible()  # its accuracy, on its page
        seen["run_page"] = True
        page.goto(f"{mlflow_url}/#/models")
        row = page.get_by_role("row").filter(has_text=model)
        expect(row).to_contain_text(f"Version {version}")
        with contextlib.suppress(Error):  # the registry page's announcement, faded out
            page.get_by_role("dialog").get_by_role("button", name="Close").click(timeout=5_000)
            expect(page.get_by_role("dialog")).to_have_count(0, timeout=5_000)
        page.screenshot(path=f"{shots}/team-mlflow-models.png")
        seen["model_row"] = row.inner_text()
    # Prefect's UI asks for the auth string in a form of its own: a wrong one is refused first.
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(60_000)
    page.goto(prefect_url + "/runs")
    for auth_string in ("admin:wrong", os.environ["PREFECT_API_AUTH_STRING"]):
        login = page.get_by_role("button", name="Login")
        expect(login).to_be_visible()
        page.locator("input").first.fill(auth_string)
        login.click()
        if auth_string == "admin:wrong":
            expect(page.get_by_text("Authentication failed.").first).to_be_visible()
            seen["prefect_wrong_string_at"] = page.url
    expect(page.get_by_text(flow_name).first).to_be_visible()
    for toast in page.get_by_role("button", name="Close").all():  # the refusals' notices
        with contextlib.suppress(Error):
            toast.click(timeout=2_000)
    page.screenshot(path=f"{shots}/team-prefect-runs.png")
    seen["prefect_runs"] = page.inner_text("body")
    browser.close()
print(json.dumps(seen))
"""


@pytest.mark.browser
def test_the_browser_logs_in_to_the_team_uis_and_finds_a_users_run_and_model(
    team: Hosts, tmp_path: Path
) -> None:
    """As a user who is not the admin, at the server's own address (not localhost, where
    MLflow's default CORS origins would hide a refusal of the UI's POSTs)."""
    pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("no Chromium: apt-get install chromium (make chromium)")
    erin = {**_client_env(team), **_user(team, "erin")}
    names = ["team-browse", "team-browse-model", "team-browse-check"]
    record = [sys.executable, "-c", RECORD_AS_USER, *names]
    done = team.run(team.server, record, env=erin, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    made = json.loads(done.stdout.strip().splitlines()[-1])
    tmp_path.chmod(0o777)
    browse = [sys.executable, "-c", BROWSE_LOGGED_IN, chromium, str(tmp_path)]
    browse += [made["experiment_id"], names[1], made["version"], names[2]]
    done = team.run(team.server, browse, env=erin, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    screenshots = REPO / "reports" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    for shot in tmp_path.glob("team-*.png"):
        shutil.copy2(shot, screenshots / shot.name)

    assert "ERR_INVALID_AUTH_CREDENTIALS" in seen["refused"]["no password"][0], seen["refused"]
    status, text = seen["refused"]["wrong password"]
    assert status == 401 and "You are not authenticated" in text, seen["refused"]
    assert not seen["refused_requests"], seen["refused_requests"]  # none refused (403) or 5xx
    assert "Request error" not in seen["runs_page"], seen["runs_page"][-600:]
    assert "browse-run" in seen["runs_page"] and seen["run_page"], seen
    assert f"Version {made['version']}" in seen["model_row"], seen["model_row"]
    assert "/login" in seen["prefect_wrong_string_at"], seen  # still asked for the auth string
    assert names[2] in seen["prefect_runs"] and made["flow_run"] in seen["prefect_runs"], seen
