"""Progress from the tasks to the flow's process, the one that records it.

Workers may sit on machines that cannot reach the tracking store, so a task never records
anything itself: it publishes each epoch (`publish_progress`), and the flow's process collects it
(`ProgressFeed`) and records it.
"""

from __future__ import annotations

import queue
import sys
from typing import Any

from digits.edges.dask_runner import is_dask_runner
from digits.edges.prefect_server import drain_prefect_workers_async

# Workers may sit on machines that cannot reach the tracking store, so a task never records
# anything itself: it publishes each epoch, and the flow's process (the one writer) records it.
# On Dask the message goes through the scheduler's event log (`Worker.log_event` ->
# `Client.subscribe_topic`); tasks that run in the flow's own process (Prefect's thread pool, as
# in tests) use an in-process queue.

# The in-process meeting point of the two ends: a task is handed only the topic's name (it must
# pickle to reach a Dask worker), so a feed in the same process is found by that name. It holds
# only the feeds open now (`ProgressFeed.close` removes its own), as `logging` holds its loggers.
_LOCAL_TOPICS: dict[str, queue.SimpleQueue[Any]] = {}


def publish_progress(topic: str, message: dict[str, Any]) -> None:
    """Send `message` to whoever subscribed to `topic` (see `ProgressFeed`)."""
    if "distributed" in sys.modules:  # a Dask worker has it; importing it costs a task 0.3 s
        from distributed import get_worker

        try:
            get_worker().log_event(topic, message)
            return
        except ValueError:  # not inside a Dask worker
            pass
    local = _LOCAL_TOPICS.get(topic)
    if local is not None:
        local.put(message)


class ProgressFeed:
    """The flow's end of `publish_progress`: collects messages until `drain` takes them."""

    def __init__(self, topic: str, task_runner: Any = None) -> None:
        self.topic = topic
        self._messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        _LOCAL_TOPICS[topic] = self._messages
        client = getattr(task_runner, "client", None) if is_dask_runner(task_runner) else None
        self._client = client
        if client is not None:
            client.subscribe_topic(topic, lambda event: self._messages.put(event[1]))

    def drain(self) -> list[dict[str, Any]]:
        """The messages received since the last call, in the order they came."""
        out = []
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop listening; let the workers send what Prefect still holds while the API listens."""
        _LOCAL_TOPICS.pop(self.topic, None)
        if self._client is not None:
            self._client.unsubscribe_topic(self.topic)
            self._client.run(drain_prefect_workers_async)
