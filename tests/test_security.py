"""Security of the connections: TLS to a Dask cluster, servers bound to 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from digits.config import ComputeConfig, DaskTLS
from digits.edges.dask_runner import LOOPBACK, dask_security, plain_tcp_warning, task_runner
from digits.errors import DigitsError

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> DaskTLS:
    """A CA and a certificate signed by it (Dask's temporary credentials), written to files."""
    temporary = Security.temporary()
    directory = tmp_path_factory.mktemp("tls")
    (directory / "ca.pem").write_text(temporary.tls_ca_file)  # type: ignore[attr-defined]
    (directory / "client.pem").write_text(temporary.tls_client_cert)  # type: ignore[attr-defined]
    (directory / "client.key").write_text(temporary.tls_client_key)  # type: ignore[attr-defined]
    return DaskTLS(
        ca_file=directory / "ca.pem", cert=directory / "client.pem", key=directory / "client.key"
    )


def test_a_tls_cluster_is_reached_with_the_certificates_in_params(tls_files: DaskTLS) -> None:
    server = Security(
        require_encryption=True,
        tls_ca_file=str(tls_files.ca_file),
        tls_scheduler_cert=str(tls_files.cert),
        tls_scheduler_key=str(tls_files.key),
        tls_worker_cert=str(tls_files.cert),
        tls_worker_key=str(tls_files.key),
        tls_client_cert=str(tls_files.cert),
        tls_client_key=str(tls_files.key),
    )
    with LocalCluster(
        n_workers=1, processes=False, protocol="tls://", security=server, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        compute = ComputeConfig(dask_address=address, dask_tls=tls_files)
        with Client(address, security=dask_security(compute, address), timeout=20) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        with pytest.raises((OSError, TypeError, ValueError, asyncio.TimeoutError)):
            Client(address, timeout=3)  # no certificates: refused
        runner = task_runner(compute)
        assert runner.client_kwargs["security"].require_encryption


def test_tls_settings_that_cannot_work_are_one_line(tmp_path: Path, tls_files: DaskTLS) -> None:
    with pytest.raises(DigitsError, match=r"needs TLS certificates: set compute\.dask_tls"):
        dask_security(ComputeConfig(), "tls://10.0.0.5:8786")
    missing = tls_files.model_copy(update={"key": tmp_path / "nope.key"})
    with pytest.raises(DigitsError, match=r"compute.dask_tls.key: no file at .*nope.key"):
        dask_security(ComputeConfig(dask_tls=missing), "tls://10.0.0.5:8786")
    with pytest.raises(DigitsError, match="is not tls://"):
        dask_security(ComputeConfig(dask_tls=tls_files), "tcp://10.0.0.5:8786")


def test_plain_tcp_to_another_machine_is_warned_about() -> None:
    warning = plain_tcp_warning("tcp://10.0.0.5:8786")
    assert warning is not None and "anyone who can reach it can run code" in warning
    assert plain_tcp_warning("tcp://127.0.0.1:8786") is None
    assert plain_tcp_warning("tls://10.0.0.5:8786") is None


def test_the_local_cluster_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    kwargs = task_runner(ComputeConfig(device="cpu", cpu_workers=1)).cluster_kwargs
    assert kwargs["host"] == LOOPBACK
    with LocalCluster(**{**kwargs, "n_workers": 0}) as cluster:  # the scheduler alone
        assert cluster.scheduler_address.startswith(f"tcp://{LOOPBACK}:")
