"""`python -m digits.edges.team COMMAND`: the team services and what joins them.

up           start (or find up) every service; write the admin's .team/client.env
down         stop them, in reverse order
status       each service: up or down, its address, pid and memory (exit 3 if one is down)
add-user N   an MLflow user N; writes .team/users/N.env for them
cert HOST    a key and certificate for worker host HOST, signed by the team's CA
worker       run a Dask worker of the team's scheduler here (--listen-host: this host's address)
pool-worker  deploy this checkout's flows (prefect.yaml) and run the work pool's worker here
dvc-remote   make the S3 store this checkout's DVC remote `team` (keys in .dvc/config.local)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from digits.edges.exits import run_or_exit
from digits.edges.team.certs import ensure_certificates, issue_host_certificate, worker_certs
from digits.edges.team.client import add_user, client_settings, write_client_file
from digits.edges.team.daemons import port_taken, process_memory_mb
from digits.edges.team.layout import (
    ADMIN_USER,
    DEFAULT_PORT_BASE,
    STATE_DIR,
    Ports,
    TeamLayout,
    load_layout,
    load_or_make_secrets,
)
from digits.edges.team.pool import (
    WORK_POOL,
    deploy_flows,
    ensure_work_pool,
    pool_worker_command,
    pool_worker_env,
)
from digits.edges.team.remote import configure_dvc_remote
from digits.edges.team.stack import (
    Service,
    base_env,
    port_of,
    postgres_bin,
    rclone_bin,
    service_pid,
    services,
    start_service,
    stop_service,
    worker_command,
)
from digits.errors import DigitsError


def _layout(args: argparse.Namespace) -> TeamLayout:
    state = Path(args.state).resolve()
    saved = load_layout(state)
    if args.command == "up" and (args.host or args.port_base):
        base = args.port_base or DEFAULT_PORT_BASE
        return TeamLayout(state, args.host or "127.0.0.1", Ports.from_base(base))
    if saved is not None:
        return saved
    if args.command != "up":
        raise DigitsError(f"no team services were started in {state}: run make team-up first")
    return TeamLayout(state)


def _is_up(layout: TeamLayout, service: Service) -> bool:
    secrets_ = load_or_make_secrets(layout.state)
    return service_pid(layout, service) is not None and service.healthy(layout, secrets_)


def up(layout: TeamLayout, project: Path) -> None:
    """Start every service not up yet, in order; on a failure stop those this call started."""
    postgres_bin("initdb"), rclone_bin()  # missing programs: say so before anything starts
    saved = load_layout(layout.state)
    if saved is not None and saved != layout and any(_is_up(saved, s) for s in services()):
        raise DigitsError(
            f"the team services in {layout.state} run on {saved.host} from port "
            f"{saved.ports.postgres}: run make team-down before moving them"
        )
    secrets_ = load_or_make_secrets(layout.state)
    ensure_certificates(layout.path("certs"), layout.host)
    layout.save()
    started: list[Service] = []
    try:
        for service in services():
            port = port_of(layout, service)
            if _is_up(layout, service):
                print(f"{service.name:9} already up on {layout.host}:{port}")
                continue
            if port_taken(layout.host, port):
                raise DigitsError(
                    f"{service.name}: port {port} on {layout.host} is taken by another program; "
                    "stop it, or start the team services elsewhere with --port-base N"
                )
            seconds = start_service(layout, secrets_, service)
            started.append(service)
            pid = service_pid(layout, service)
            memory = process_memory_mb(pid) if pid else 0.0
            print(
                f"{service.name:9} up on {layout.host}:{port} in {seconds:.1f} s "
                f"({memory:.0f} MiB)",
                flush=True,
            )
    except BaseException:
        for service in reversed(started):
            stop_service(layout, service)
        raise
    pool_env = {
        **base_env(),
        "PREFECT_API_URL": layout.prefect_api_url,
        "PREFECT_API_AUTH_STRING": secrets_.prefect_auth_string,
        "PREFECT_HOME": str(layout.path("prefect")),
    }
    if ensure_work_pool(pool_env):
        print(f"work pool {WORK_POOL} created (process; run its worker with pool-worker)")
    client_file = layout.path("client.env")
    admin = client_settings(layout, secrets_, ADMIN_USER, secrets_.mlflow_admin_password, project)
    write_client_file(client_file, admin, ADMIN_USER)
    print(f"client settings: {client_file} (use them with DIGITS_SERVICES=team)")


def down(layout: TeamLayout) -> None:
    for service in reversed(services()):
        was_up = service_pid(layout, service) is not None
        stop_service(layout, service)
        print(f"{service.name:9} {'stopped' if was_up else 'was not running'}")


def status(layout: TeamLayout) -> int:
    secrets_ = load_or_make_secrets(layout.state)
    all_up = True
    for service in services():
        pid = service_pid(layout, service)
        up_now = pid is not None and service.healthy(layout, secrets_)
        all_up &= up_now
        where = f"{layout.host}:{port_of(layout, service)}"
        detail = f"pid {pid}, {process_memory_mb(pid):.0f} MiB" if up_now and pid else ""
        print(f"{service.name:9} {'up' if up_now else 'DOWN':5} {where:22} {detail}")
    return 0 if all_up else 3


def worker_settings(layout: TeamLayout, project: Path) -> dict[str, str]:
    """What a worker's tasks need besides the scheduler: the Prefect API they report to."""
    from digits.edges.services import current_project, read_client_file

    client = read_client_file(layout.path("client.env"), current_project())
    wanted = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")
    return {name: client[name] for name in wanted if name in client}


def run_pool_worker(project: Path, name: str | None, deploy: bool = True) -> None:
    """Deploy `project`'s flows and become the work pool's worker (runs until stopped).

    Its flow runs record with this checkout's client settings (``.team/client.env``, or the
    file ``DIGITS_TEAM_CLIENT`` names): as the MLflow user they name.
    """
    from digits.edges.services import Project, read_client_file, team_client_file

    checkout = Project(project)
    env = pool_worker_env(project, read_client_file(team_client_file(checkout), checkout))
    if deploy:
        names = deploy_flows(project, env)
        print(f"deployed on work pool {WORK_POOL}: {', '.join(names) or 'none'}", flush=True)
    command = pool_worker_command(name)
    os.execve(command[0], command, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m digits.edges.team", description=__doc__)
    parser.add_argument("--state", default=STATE_DIR, help="state folder (default .team)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the services")
    start.add_argument("--host", help="address to bind to (default 127.0.0.1)")
    start.add_argument(
        "--port-base", type=int, help=f"first of 5 ports (default {DEFAULT_PORT_BASE})"
    )
    sub.add_parser("down", help="stop the services")
    sub.add_parser("status", help="say which services are up")
    user = sub.add_parser("add-user", help="add an MLflow user")
    user.add_argument("name")
    cert = sub.add_parser("cert", help="a worker host's own key and certificate")
    cert.add_argument("host", help="the worker host's address (its --listen-host)")
    worker = sub.add_parser("worker", help="run a Dask worker of the team's scheduler")
    worker.add_argument("--listen-host", default="127.0.0.1")
    worker.add_argument("--threads", type=int, default=1)
    worker.add_argument(
        "--certs", type=Path, help="folder of this host's ca.pem, worker.pem, worker-key.pem"
    )
    pool = sub.add_parser("pool-worker", help="deploy the flows and run the work pool's worker")
    pool.add_argument("--name", help="the worker's name in the Prefect UI")
    pool.add_argument("--no-deploy", action="store_true", help="run the worker only")
    remote = sub.add_parser("dvc-remote", help="the S3 store as DVC remote `team`")
    remote.add_argument("--name", default="team")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    project = Path.cwd().resolve()

    def run() -> int:
        if args.command == "pool-worker":
            run_pool_worker(project, args.name, deploy=not args.no_deploy)
        layout = _layout(args)
        if args.command == "up":
            up(layout, project)
        elif args.command == "down":
            down(layout)
        elif args.command == "status":
            return status(layout)
        elif args.command == "add-user":
            path = add_user(layout, load_or_make_secrets(layout.state), args.name, project)
            print(f"user {args.name} added; hand them {path} (their .team/client.env)")
        elif args.command == "cert":
            folder = issue_host_certificate(layout.path("certs"), args.host)
            print(f"worker host {args.host}: hand it {folder} (worker --certs FOLDER)")
        elif args.command == "dvc-remote":
            configure_dvc_remote(layout, load_or_make_secrets(layout.state), args.name, project)
            print(f"DVC remote {args.name}: s3://dvc at {layout.s3_url} (dvc push / dvc pull)")
        else:
            certs = worker_certs(layout.path("certs"), args.listen_host, args.certs)
            command = worker_command(layout, args.listen_host, args.threads, certs)
            os.environ.update(worker_settings(layout, project))
            os.execv(command[0], command)
        return 0

    sys.exit(run_or_exit(run))


if __name__ == "__main__":
    main()
