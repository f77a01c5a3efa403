"""Task placement: an address joins a cluster, GPUs get one worker each, else CPU workers."""

import os

import pytest

from digits.config import ComputeConfig
from digits.edges.dask_runner import plan_placement, task_runner
from digits.errors import DigitsError


def test_address_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITS_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    placement = plan_placement(ComputeConfig(dask_address="tcp://other:8786"), gpus=4)
    assert (placement.kind, placement.address) == ("address", "tcp://10.0.0.5:8786")


def test_one_worker_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    assert plan_placement(ComputeConfig(), gpus=4).workers == 4
    assert plan_placement(ComputeConfig(), gpus=4).kind == "cuda"
    assert plan_placement(ComputeConfig(device="cpu", cpu_workers=3), gpus=4).kind == "cpu"
    assert plan_placement(ComputeConfig(cpu_workers=3), gpus=0).workers == 3


def test_cuda_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    with pytest.raises(DigitsError, match="no GPU is visible"):
        plan_placement(ComputeConfig(device="cuda"), gpus=0)


def test_cpu_runner_is_a_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    runner = task_runner(ComputeConfig(device="cpu", cpu_workers=2))
    assert runner.cluster_kwargs["n_workers"] == 2
    assert "LocalCluster" in str(runner.cluster_class)


def test_an_existing_cluster_runs_as_many_tasks_as_it_has_worker_threads() -> None:
    from distributed import LocalCluster

    from digits.edges.dask_runner import task_slots

    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        placement = plan_placement(ComputeConfig(dask_address=cluster.scheduler_address))
        with task_runner(ComputeConfig(), placement) as runner:
            assert task_slots(placement, runner) == 4


def test_an_existing_cluster_without_workers_is_a_clear_error() -> None:
    from distributed import LocalCluster

    from digits.edges.dask_runner import task_slots

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        placement = plan_placement(ComputeConfig(dask_address=cluster.scheduler_address))
        with (
            task_runner(ComputeConfig(), placement) as runner,
            pytest.raises(DigitsError, match="has no worker after 1 s"),
        ):
            task_slots(placement, runner, wait_s=1)


def test_fewer_tasks_than_workers_get_the_idle_workers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    compute = ComputeConfig(device="cpu", cpu_workers=4, threads_per_worker=1)
    assert (
        plan_placement(compute, max_tasks=1).workers,
        plan_placement(compute, max_tasks=1).threads,
    ) == (1, 4)
    assert (
        plan_placement(compute, max_tasks=3).workers,
        plan_placement(compute, max_tasks=3).threads,
    ) == (3, 1)
    assert (plan_placement(compute).workers, plan_placement(compute).threads) == (4, 1)
    runner = task_runner(compute, plan_placement(compute, max_tasks=2))
    assert runner.cluster_kwargs["n_workers"] == 2
    assert runner.cluster_kwargs["processes"] is True
    assert runner.cluster_kwargs["env"]["DIGITS_WORKER_THREADS"] == "2"


def test_one_task_runs_in_a_thread_of_the_flow_s_process_with_every_torch_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("DIGITS_WORKER_THREADS", raising=False)  # restored after the test
    compute = ComputeConfig(device="cpu", cpu_workers=2, threads_per_worker=1)
    assert not plan_placement(compute).in_process
    assert not plan_placement(compute, max_tasks=2).in_process
    placement = plan_placement(compute, max_tasks=1)
    assert (placement.in_process, placement.workers, placement.threads) == (True, 1, 2)
    runner = task_runner(compute, placement)
    # Prefect's own thread pool, one thread: no Dask cluster for a single task.
    assert type(runner).__name__ == "ThreadPoolTaskRunner" and runner._max_workers == 1
    assert os.environ["DIGITS_WORKER_THREADS"] == "2"


def test_a_worker_takes_the_threads_its_placement_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from digits.edges.dask_runner import configure_worker_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("DIGITS_WORKER_THREADS", "3")
    try:
        configure_worker_threads(ComputeConfig(threads_per_worker=1))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_local_workers_start_with_the_steady_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    import dask
    from distributed import Client, LocalCluster

    from digits.edges.allocator import ALLOCATOR_ENV

    monkeypatch.delenv("DIGITS_DASK_ADDRESS", raising=False)
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    saved = copy.deepcopy(dask.config.config)
    try:
        runner = task_runner(ComputeConfig(device="cpu", cpu_workers=1))
        with (
            LocalCluster(**runner.cluster_kwargs) as cluster,
            Client(cluster) as client,
        ):
            worker_env = client.run(lambda: dict(__import__("os").environ))
        [env] = worker_env.values()
        # Dask's own MALLOC_TRIM_THRESHOLD_ (64 KiB) is replaced, before the process starts.
        assert {name: env.get(name) for name in ALLOCATOR_ENV} == ALLOCATOR_ENV
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def test_a_finished_flow_s_local_workers_get_time_to_exit_instead_of_being_killed() -> None:
    from distributed import Client, LocalCluster

    from digits.edges.dask_runner import close_local_workers

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_slow_to_close(), name="slow-to-close")
        (nanny,) = cluster.workers.values()
        process = nanny.process.process  # the worker's multiprocessing.Process
        close_local_workers(DaskTaskRunner(client), timeout_s=30)
    assert process.exitcode == 0  # -9 when Dask's shutdown killed it after 4 s


class DaskTaskRunner:  # what `close_local_workers` is given: a runner with a client
    def __init__(self, client: object) -> None:
        self.client = client


def _slow_to_close() -> object:
    """A worker plugin whose teardown takes 5 s: longer than Dask's 4 s before it kills."""
    from distributed import WorkerPlugin

    class SlowToClose(WorkerPlugin):
        def teardown(self, worker: object) -> None:
            import time

            time.sleep(5)

    return SlowToClose()
