"""The shared Redis cache: one pool and one client per process, whatever the thread."""

from __future__ import annotations

import threading
import uuid

from project.cache import SharedRedisCache


def test_every_thread_and_call_uses_one_client_and_the_cache_works(real_redis):
    cache = SharedRedisCache(
        "redis://127.0.0.1:6379/14", {"KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    )
    clients = [cache._cache.get_client(), cache._cache.get_client(write=True)]
    other = threading.Thread(target=lambda: clients.append(cache._cache.get_client()))
    other.start()
    other.join()
    assert len({id(client) for client in clients}) == 1

    read: dict[int, object] = {}

    def write_and_read(n: int) -> None:
        cache.set(f"key-{n}", {"n": n}, timeout=30)
        read[n] = cache.get(f"key-{n}")

    workers = [threading.Thread(target=write_and_read, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert read == {n: {"n": n} for n in range(8)}
    assert cache.get_many([f"key-{n}" for n in range(8)]) == {
        f"key-{n}": {"n": n} for n in range(8)
    }
    assert cache.add("key-0", "taken") is False
    cache.delete_many([f"key-{n}" for n in range(8)])
