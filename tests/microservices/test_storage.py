"""Real redis-server and memcached storage tiers: readiness, operation counts, clean stop."""

import socket

import pytest
import redis
from pymemcache.client.base import Client

from leanstack.errors import LeanstackError
from leanstack.microservices.storage import StorageServer
from leanstack.ports import free_ports


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_server_counts_the_operations_it_serves(kind, tmp_path):
    port = free_ports(1)[0]
    s = StorageServer("store", kind, port, tmp_path)
    s.start()
    try:
        s.wait_ready()
        before = s.ops_served()
        if kind == "redis":
            r = redis.Redis("127.0.0.1", port)  # its connection set-up is not counted
            r.set("a", b"1")
            assert r.get("a") == b"1"
            r.ping()
            r.close()
        else:
            c = Client(("127.0.0.1", port))
            c.set("a", b"1")
            assert c.get("a") == b"1"
            c.close()
        assert s.ops_served() - before == 2
        proc = s.proc
    finally:
        s.stop()
    assert proc.poll() is not None and s.proc is None
    assert not list(tmp_path.glob("*.rdb"))  # no persistence


def test_a_server_that_cannot_start_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        s = StorageServer("store", "redis", taken.getsockname()[1], tmp_path)
        s.start()
        try:
            with pytest.raises(LeanstackError, match="storage tier 'store' .* did not start") as e:
                s.wait_ready(timeout_s=5)
        finally:
            s.stop()
    assert "\n" not in str(e.value) and "store.log" in str(e.value)


def test_unknown_storage_kind_is_rejected(tmp_path):
    with pytest.raises(LeanstackError, match="use redis or memcached"):
        StorageServer("x", "mongodb", 1, tmp_path)
