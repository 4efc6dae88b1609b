"""The ceiling of batched serving from Python threads: hand-offs alone, nothing scored.

``python benchmarks/handoffs.py`` has ``--threads`` threads (32) send requests that carry
nothing: each queues a request and sleeps on a lock of its own, and the thread whose
request fills a batch of ``--threads`` wakes the others, one after the other (``chain``,
each woken thread waking the next, as :class:`treecomp.serving_queue.Chain` does) or all at
once (``all``). No input is checked and nothing is scored, so the requests a second it
prints bound what :class:`treecomp.Serving` can reach from threads on this machine, whatever
its batcher does; ``benchmarks/serving.py`` measures the real thing against ``cm.predict``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time


class _Request:
    __slots__ = ("done", "lead", "next")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.next: _Request | None = None
        self.lead = False


def run(threads: int, seconds: float, wake: str) -> tuple[float, float]:
    """Requests a second and process CPU microseconds a request."""
    lock = threading.Lock()
    pending: list[_Request] = []
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def caller(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            request = _Request()
            with lock:
                pending.append(request)
                batch = pending[:] if len(pending) >= threads else None
                if batch is not None:
                    pending.clear()
            if batch is None:
                request.done.acquire(timeout=1.0)  # the last batch of a round may not fill
                following = request.next
                if wake == "chain" and following is not None:
                    if following.lead:
                        following = following.next
                    if following is not None:
                        following.done.release()
            else:
                request.lead = True
                for a, b in itertools.pairwise(batch):
                    a.next = b
                others = [r for r in batch if r is not request]
                for other in others if wake == "all" else others[:1]:
                    other.done.release()
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    cpu = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = sum(counts)
    return total / seconds, (time.process_time() - cpu) / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.threads} threads, {args.seconds:g} s a round, load average {load}")
    for r in range(1, args.rounds + 1):
        for wake in ("chain", "all"):
            rate, cpu = run(args.threads, args.seconds, wake)
            print(f"{r}: wake {wake:5s} {rate:9.0f} requests/s  {cpu:5.1f} us of CPU a request")


if __name__ == "__main__":
    main()
