"""The near cache's Cluster channel without servers: ``CLUSTER SLOTS`` parsing, the
configuration checks, and how the channels of the primaries make one state for the local
layer (fake node channels that report what each test says; no threads, no timing).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cachekit import Cache, LocalCache
from cachekit.exceptions import ConfigurationError
from cachekit.near.channel import Sink
from cachekit.near.cluster import ClusterChannel, Topology, topology


def test_cluster_slots_give_the_primaries_and_the_ranges() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"aaa"], [b"10.0.0.4", 7003, b"ddd"]],
        [5461, 10922, [b"", 7001, b"bbb"]],  # "": the node that was asked
        [10923, 16383, [b"10.0.0.3", 7002, b"ccc"]],
    ]
    primaries, ranges = topology(reply, ("10.0.0.2", 7001))
    assert primaries == {
        "aaa": ("10.0.0.1", 7000),
        "bbb": ("10.0.0.2", 7001),
        "ccc": ("10.0.0.3", 7002),
    }
    assert ranges == ((0, 5460, "aaa"), (5461, 10922, "bbb"), (10923, 16383, "ccc"))


def test_pubsub_mode_is_refused_on_cluster() -> None:
    with pytest.raises(ConfigurationError, match="not for Redis Cluster"):
        ClusterChannel("redis+cluster://127.0.0.1:7000", "p", LocalCache(), mode="pubsub")
    with pytest.raises(ConfigurationError, match="not for Redis Cluster"):
        LocalCache(mode="pubsub").start("redis+cluster://127.0.0.1:7000", "p")


def test_a_cluster_url_is_no_longer_refused_and_does_no_io() -> None:
    local = LocalCache()
    cache = Cache(local=local).configure("redis+cluster://127.0.0.1:1")
    try:
        assert not local.ready  # nobody there: every read passes through
        assert not local.follows("a" * 40)
    finally:
        cache.sync.close()


class FakeNode:
    """A primary's channel that reports only what the test says."""

    def __init__(self, address: tuple[str, int], sink: Sink) -> None:
        self.address, self.sink = address, sink
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, *, wait: bool = True) -> None:
        self.stopped = True


class Events:
    """A sink that records what the Cluster channel tells it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def channel_up(self, mode: str) -> None:
        self.seen.append(f"up {mode}")

    def channel_down(self) -> None:
        self.seen.append("down")

    def invalidate(self, keys: Iterable[str]) -> None:
        self.seen.append("invalidate " + ",".join(keys))

    def flush(self) -> None:
        self.seen.append("flush")


def slots(*owners: tuple[str, int]) -> Topology:
    """A topology where node ``n<i>`` at port ``owners[i]`` serves an equal share."""
    share = 16384 // len(owners)
    primaries = {node: ("127.0.0.1", port) for node, port in owners}
    ranges = tuple(
        (i * share, 16383 if i == len(owners) - 1 else (i + 1) * share - 1, node)
        for i, (node, _) in enumerate(owners)
    )
    return primaries, ranges


def cluster_channel() -> tuple[ClusterChannel, Events, dict[int, FakeNode]]:
    events, nodes = Events(), {}

    def open_node(address: tuple[str, int], sink: Sink) -> FakeNode:
        nodes[address[1]] = FakeNode(address, sink)
        return nodes[address[1]]

    channel = ClusterChannel("redis+cluster://127.0.0.1:1", "p", events, open_node=open_node)
    return channel, events, nodes


def test_the_layer_serves_only_while_every_primary_is_followed() -> None:
    channel, events, nodes = cluster_channel()
    channel.follow(slots(("a", 1), ("b", 2), ("c", 3)))
    assert sorted(nodes) == [1, 2, 3]
    assert all(node.started for node in nodes.values())
    nodes[1].sink.channel_up("tracking")
    nodes[2].sink.channel_up("tracking")
    assert events.seen == []
    assert not channel.follows("a")
    nodes[3].sink.channel_up("tracking")
    assert events.seen == ["up tracking"]
    assert channel.follows("a")
    assert not channel.follows("z")
    nodes[2].sink.invalidate(["p:{k}"])
    nodes[2].sink.channel_down()  # one primary lost: dark
    assert events.seen[1:] == ["invalidate p:{k}", "down"]
    assert not channel.follows("a")
    nodes[2].sink.channel_up("tracking")
    assert events.seen[3:] == ["up tracking"]


def test_another_set_of_primaries_goes_dark_until_the_new_one_is_followed() -> None:
    channel, events, nodes = cluster_channel()
    channel.follow(slots(("a", 1), ("b", 2)))
    for node in list(nodes.values()):
        node.sink.channel_up("tracking")
    old_b = nodes[2]
    channel.follow(slots(("a", 1), ("r", 4)))  # b failed over to its replica r
    assert events.seen == ["up tracking", "down"]
    assert old_b.stopped
    assert nodes[4].started
    assert not nodes[1].stopped
    old_b.sink.channel_up("tracking")  # a late report of the channel let go: ignored
    assert events.seen[-1] == "down"
    assert not channel.follows("r")
    nodes[4].sink.channel_up("tracking")
    assert events.seen[-1] == "up tracking"
    assert channel.follows("r")
    assert not channel.follows("b")


def test_slots_moved_between_followed_primaries_flush_and_keep_serving() -> None:
    channel, events, nodes = cluster_channel()
    channel.follow(slots(("a", 1), ("b", 2)))
    for node in list(nodes.values()):
        node.sink.channel_up("tracking")
    primaries, _ = slots(("a", 1), ("b", 2))
    channel.follow((primaries, ((0, 99, "b"), (100, 8191, "a"), (8192, 16383, "b"))))
    assert events.seen == ["up tracking", "flush"]
    assert channel.follows("a")
    assert sorted(nodes) == [1, 2]  # no channel opened or closed
    channel.follow((primaries, ((0, 99, "b"), (100, 8191, "a"), (8192, 16383, "b"))))
    assert events.seen == ["up tracking", "flush"]  # the same topology again: nothing


def test_stopping_stops_every_primarys_channel() -> None:
    channel, events, nodes = cluster_channel()
    channel.follow(slots(("a", 1), ("b", 2)))
    channel.stop()
    assert all(node.stopped for node in nodes.values())
    assert events.seen == ["down"]
    assert not channel.follows("a")
    channel.follow(slots(("c", 3)))  # stopped: nothing opens again
    assert sorted(nodes) == [1, 2]
