"""An open-loop load generator of signed Slack requests, run on 127.0.0.1.

Each of ``senders`` threads owns every ``senders``-th slot of a fixed schedule at
``rate`` requests per second, sends its request at the slot's time over a new HTTP
connection, and reads the answer. Latency is counted from the slot's time, not from
when the request actually left, so a server that falls behind is not flattered by
senders that waited for it (no coordinated omission). Bodies are built and signed
before the clock starts so the generator spends its time sending.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sandbox.slack import sender

SLACK_DEADLINE = 3.0
"""Seconds Slack waits for the ack of a slash command or a click before it gives up."""


@dataclass
class LoadResult:
    label: str
    senders: int
    rate: float
    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    @property
    def over_deadline(self) -> int:
        return sum(1 for latency in self.latencies if latency > SLACK_DEADLINE)


def run_load(
    label: str,
    events_url: str,
    signing_secret: str,
    body_for: Callable[[int], str],
    senders: int,
    rate: float,
    duration: float,
) -> LoadResult:
    """Send ``rate * duration`` signed requests from ``senders`` threads; stops by itself."""
    total = int(rate * duration)
    prepared = [_prepare(body_for(n), signing_secret) for n in range(total)]
    result = LoadResult(label, senders, rate, duration)
    lock = threading.Lock()
    start = time.perf_counter() + 0.3
    threads = [
        threading.Thread(
            target=_sender,
            args=(events_url, prepared[index::senders], start, index, senders, rate, result, lock),
            name=f"bench-sender-{index}",
            daemon=True,
        )
        for index in range(min(senders, total))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 60)
    result.elapsed = time.perf_counter() - start
    return result


def _prepare(body: str, signing_secret: str) -> tuple[bytes, dict[str, str]]:
    data = body.encode()
    headers = {**sender.sign(signing_secret, body), "content-length": str(len(data))}
    return data, headers


def _sender(
    events_url: str,
    requests: list[tuple[bytes, dict[str, str]]],
    start: float,
    index: int,
    senders: int,
    rate: float,
    result: LoadResult,
    lock: threading.Lock,
) -> None:
    url = urlsplit(events_url)
    for k, (body, headers) in enumerate(requests):
        slot = start + (index + k * senders) / rate
        pause = slot - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        try:
            status = _post(url.hostname or "127.0.0.1", url.port or 80, url.path, body, headers)
        except OSError as exc:
            with lock:
                result.errors[type(exc).__name__] += 1
            continue
        latency = time.perf_counter() - slot
        with lock:
            result.latencies.append(latency)
            result.statuses[status] += 1


def _post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
