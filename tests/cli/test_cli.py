"""The ``cachekit`` command against real Redis: stats, get, bloom info|warm|rebuild, purge.

Commands run in-process through :func:`cachekit.cli.main` (output read with ``capsys``),
plus the installed console script once for ``--help`` and once for ``stats``. Every test
works under its own prefix (the ``prefix`` fixture removes its keys afterwards).
"""

from __future__ import annotations

import datetime
import decimal
import inspect
import io
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from cachekit import Cache, MsgpackSerializer, PickleSerializer
from cachekit.cli import main
from cachekit.cli.server import DEFAULT_PREFIX
from cachekit.contrib import default_cache, set_default_cache
from cachekit.flow.envelope import encode
from cachekit.testing import FakeClock
from tests.cli.support import Cli, in_process
from tests.support.servers import free_port

SCRIPT = Path(sys.executable).with_name("cachekit")


@pytest.fixture
def cli(redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs ``cachekit ARGS --url <test redis> --prefix <test prefix>`` in-process."""
    return in_process(redis_url, prefix, capsys)


@pytest.fixture
def cache(redis_url: str, prefix: str) -> Iterator[Cache]:
    """A cache on the test prefix with exact TTLs (no jitter)."""
    cache = Cache.from_url(redis_url, prefix=prefix, jitter=0)
    yield cache
    cache.sync.close()


def keys_under(client: redis.Redis, pattern: str) -> set[bytes]:
    return set(client.scan_iter(match=pattern, count=1000))


def contains(redis_url: str, prefix: str, name: str, ids: list[str]) -> list[bool]:
    """What a freshly started app process would answer for ``ids``."""
    reader = Cache.from_url(redis_url, prefix=prefix)
    try:
        bloom = reader.bloom(name, capacity=1_000, error_rate=0.001)
        return [bloom.sync.contains(i) for i in ids]
    finally:
        reader.sync.close()


# --- the console script ------------------------------------------------------------------


def test_help_runs_as_the_installed_console_script() -> None:
    done = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for command in ("stats", "get", "bloom", "purge"):
        assert command in done.stdout


def test_stats_runs_as_the_installed_console_script(
    redis_url: str, prefix: str, cache: Cache
) -> None:
    cache.sync.set("product:1", {"id": 1}, ttl=60)
    done = subprocess.run(
        [str(SCRIPT), "stats", "--url", redis_url, "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"cachekit keys under prefix {prefix!r}: 1" in done.stdout
    assert re.search(r"^value\s+value\s+1\s", done.stdout, re.MULTILINE)


# --- stats -------------------------------------------------------------------------------


def test_stats_counts_keys_per_namespace_and_kind(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set_many({f"product:{i}": {"id": i} for i in range(5)}, ttl=60)
    raw_redis.set(f"{prefix}:{{product:0}}:lease", b"token", px=60_000)

    @cache.cached(ttl=60, key="page:{n}", tags=["catalog"])
    def page(n: int) -> list[int]:
        return [n]

    page(1)  # a value and the tag's version key
    cache.bloom("products", capacity=1_000, error_rate=0.01).sync.rebuild(range(10))
    raw_redis.set(f"{prefix}:v2:{{x}}", b"another cache whose prefix extends ours")
    raw_redis.set(f"{prefix}:".encode() + b"\xff\xfe", b"a foreign key, not UTF-8")

    with cache.sync.lock("report", ttl=10):
        result = cli("stats", "--json")
    assert result.code == 0, result.err
    report = result.json()
    namespaces = report["keys"]["namespaces"]
    kinds = {ns: {kind: c["keys"] for kind, c in k.items()} for ns, k in namespaces.items()}
    assert kinds["value"] == {"value": 6, "lease": 1}
    assert kinds["tag"] == {"version": 1}
    assert kinds["lock"] == {"lock": 1, "fence": 1}
    assert kinds["bloom"]["descriptor"] == 1
    assert kinds["bloom"]["bitmap part"] == 1
    assert kinds["other"] == {"other": 2}
    assert report["keys"]["total"] == sum(sum(k.values()) for k in kinds.values())
    values = namespaces["value"]["value"]
    assert values["sampled"] == 6
    assert values["sample_bytes"] > 0
    assert values["estimated_bytes"] == values["sample_bytes"]  # every key was measured
    server = report["server"]
    assert server["software"] in ("redis", "valkey")
    assert server["version"]
    assert server["used_memory"] > 0
    assert server["connected_clients"] >= 1
    assert {"keyspace_hits", "keyspace_misses", "evicted_keys", "hit_ratio"} <= set(server)
    [bloom] = report["blooms"]
    assert bloom["name"] == "products"
    assert (bloom["capacity"], bloom["error_rate"], bloom["state"]) == (1_000, 0.01, "ready")
    assert bloom["adds_counted"] == 10
    assert bloom["memory_bytes"] > 0

    human = cli("stats")
    assert human.code == 0
    assert re.search(r"^value\s+value\s+6\s+6\s", human.out, re.MULTILINE)
    assert re.search(r"^products\s+ready\s+1,000\s+0.01\s", human.out, re.MULTILINE)
    assert "hit ratio" in human.out


def test_stats_takes_the_url_from_redis_url_and_the_prefix_from_the_url(
    redis_url: str,
    prefix: str,
    cache: Cache,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache.sync.set("k", 1, ttl=60)
    monkeypatch.setenv("REDIS_URL", f"{redis_url}?prefix={prefix}")
    assert main(["stats", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["prefix"] == prefix
    assert report["keys"]["total"] == 1


def test_stats_on_one_server_reports_it_as_the_one_primary(
    cli: Cli, cache: Cache, redis_url: str
) -> None:
    cache.sync.set_many({f"k:{i}": i for i in range(3)}, ttl=60)
    report = cli("stats", "--json").json()
    assert report["deployment"] == "server"
    [node] = report["nodes"]
    parts = urlsplit(redis_url)
    assert node["address"] == f"{parts.hostname}:{parts.port or 6379}"
    assert node["prefix_keys"] == report["keys"]["total"] == 3
    facts = {k: v for k, v in node.items() if k not in ("address", "prefix_keys")}
    summed = {k: v for k, v in report["server"].items() if k != "primaries"}
    assert summed.keys() == facts.keys()
    # Taken from the same INFO reply: the one server's facts are the deployment's.
    assert summed == facts
    assert report["server"]["primaries"] == 1
    assert "primary" not in cli("stats").out.splitlines()[0]  # no per-node table for one


def test_the_default_prefix_is_the_librarys() -> None:
    assert inspect.signature(Cache).parameters["prefix"].default == DEFAULT_PREFIX


# --- get ---------------------------------------------------------------------------------


def test_get_a_fresh_value(cli: Cli, cache: Cache, prefix: str) -> None:
    cache.sync.set("product:5", {"id": 5, "name": "Widget"}, ttl=60)
    result = cli("get", "product:5", "--json")
    assert result.code == 0, result.err
    entry = result.json()
    assert entry["key"] == "product:5"
    assert entry["redis_key"] == f"{prefix}:{{product:5}}"
    assert entry["value"] == {"id": 5, "name": "Widget"}
    assert (entry["format"], entry["signed"], entry["null"]) == ("json", False, False)
    assert entry["fresh"] is True
    assert 50 < entry["fresh_for"] <= 60
    assert entry["stale_for"] is None
    assert 50 < entry["physical_ttl"] <= 60
    assert 0 <= entry["age"] < 10

    human = cli("get", "product:5")
    assert human.code == 0
    assert "fresh for" in human.out
    assert '"name": "Widget"' in human.out


@dataclass(frozen=True)
class Receipt:
    order: int
    total: decimal.Decimal
    placed: datetime.date


def test_get_a_typed_value_shows_its_json_and_its_shape(cli: Cli, cache: Cache) -> None:
    @cache.cached(ttl=60, key="receipt:{order}")
    def receipt(order: int) -> Receipt:
        return Receipt(order, decimal.Decimal("9.90"), datetime.date(2026, 12, 7))

    receipt(7)
    entry = cli("get", "receipt:7", "--json").json()
    assert entry["value"] == {"order": 7, "total": "9.90", "placed": "2026-12-07"}
    assert re.fullmatch(r"[0-9a-f]{8}", entry["typed_shape"])
    human = cli("get", "receipt:7")
    assert f"typed (shape {entry['typed_shape']}" in human.out
    assert cli("get", "receipt:7", "--json").json()["typed_shape"] == entry["typed_shape"]


def test_get_a_stale_value_served_in_its_stale_window(
    cli: Cli, redis_url: str, prefix: str
) -> None:
    # Written "100 s ago" by a process whose clock we hold: fresh for 10 s, then stale
    # for 300 s, so Redis keeps it 310 s from the write (done just now, in real time).
    clock = FakeClock(start=time.time() - 100)
    writer = Cache.from_url(redis_url, prefix=prefix, clock=clock, jitter=0)
    try:

        @writer.cached(ttl=10, stale=300, key="item:{i}")
        def item(i: int) -> dict[str, int]:
            clock.advance(0.25)  # the loader's measured duration
            return {"i": i}

        item(1)
    finally:
        writer.sync.close()
    entry = cli("get", "item:1", "--json").json()
    assert entry["fresh"] is False
    assert entry["fresh_for"] is None
    assert 85 < entry["stale_for"] < 100
    assert 300 < entry["physical_ttl"] <= 310
    assert entry["load_time"] == pytest.approx(0.25)
    assert entry["value"] == {"i": 1}

    human = cli("get", "item:1")
    assert "stale since" in human.out
    assert "load time     250 ms" in human.out


def test_get_a_null_marker(cli: Cli, cache: Cache) -> None:
    @cache.cached(ttl=60, key="product:{product_id}", null_ttl=30)
    def product(product_id: int) -> dict[str, int] | None:
        return None

    assert product(404) is None
    result = cli("get", "product:404", "--json")
    assert result.code == 0, result.err
    entry = result.json()
    assert entry["null"] is True
    assert entry["value"] is None
    assert 20 < entry["physical_ttl"] <= 30
    assert "null marker   yes" in cli("get", "product:404").out


def test_get_a_raw_redis_key(cli: Cli, cache: Cache, prefix: str) -> None:
    cache.sync.set("product:5", [1, 2], ttl=60)
    entry = cli("get", "--raw", f"{prefix}:{{product:5}}", "--json").json()
    assert entry["key"] is None
    assert entry["value"] == [1, 2]


def test_get_a_missing_key_exits_1(cli: Cli, prefix: str) -> None:
    result = cli("get", "product:nope")
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith(f"cachekit: no entry at {prefix}:{{product:nope}}")
    # A Redis key given without --raw: the message says so.
    hint = cli("get", f"{prefix}:{{product:nope}}")
    assert hint.code == 1
    assert "try --raw" in hint.err


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (lambda r, key: r.set(key, b"x" * 64), "not a cachekit envelope"),
        (lambda r, key: r.set(key, b"hello"), "truncated header"),
        (lambda r, key: r.hset(key, "a", "b"), "holds a Redis hash"),
        (lambda r, key: r.rpush(key, "a"), "holds a Redis list"),
    ],
    ids=["foreign-bytes", "short-bytes", "hash", "list"],
)
def test_get_a_value_that_is_not_an_envelope_exits_1(
    cli: Cli,
    raw_redis: redis.Redis,
    prefix: str,
    plant: Callable[[redis.Redis, str], object],
    reason: str,
) -> None:
    plant(raw_redis, f"{prefix}:{{junk}}")
    result = cli("get", "junk")
    assert result.code == 1
    assert reason in result.err
    assert "Traceback" not in result.err


def test_get_an_envelope_copied_to_another_key_exits_1(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set("product:5", 5, ttl=60)
    data = raw_redis.get(f"{prefix}:{{product:5}}")
    assert data is not None
    raw_redis.set(f"{prefix}:{{product:6}}", data)
    result = cli("get", "product:6")
    assert result.code == 1
    assert "written for another key" in result.err


def test_get_decodes_msgpack(cli: Cli, redis_url: str, prefix: str) -> None:
    writer = Cache.from_url(redis_url, prefix=prefix, serializer=MsgpackSerializer())
    try:
        writer.sync.set("blob", {"raw": b"\x00\x01", "n": [1, 2]}, ttl=60)
    finally:
        writer.sync.close()
    entry = cli("get", "blob", "--json").json()
    assert entry["format"] == "msgpack"
    assert entry["value"] == {"raw": repr(b"\x00\x01"), "n": [1, 2]}


def test_get_never_unpickles_a_signed_pickle(
    cli: Cli, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Cache.from_url(redis_url, prefix=prefix, serializer=PickleSerializer(keys=[b"s" * 32]))
    try:
        writer.sync.set("obj", {1, 2, 3}, ttl=60)
    finally:
        writer.sync.close()

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("the CLI unpickled a payload")

    monkeypatch.setattr(pickle, "loads", refuse)
    result = cli("get", "obj", "--json")
    assert result.code == 0, result.err
    entry = result.json()
    assert (entry["format"], entry["signed"], entry["signature_checked"]) == (
        "pickle",
        True,
        False,
    )
    assert (entry["decoded"], entry["value"]) == (False, None)
    assert entry["fresh"] is True
    assert "not unpickled" in cli("get", "obj").out


class _Custom:
    """A serializer the CLI does not know: only the envelope's header can be shown."""

    code = 99
    keyring = None

    def dumps(self, value: Any) -> bytes:
        return repr(value).encode()

    def loads(self, data: bytes | memoryview) -> Any:
        raise AssertionError("the CLI decoded a payload it does not know")


def test_get_shows_the_header_of_an_envelope_in_another_format(
    cli: Cli, raw_redis: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:{{custom}}"
    now = time.time()
    raw_redis.set(key, encode(key, [1], _Custom(), created=now, expires=now + 60), px=90_000)
    result = cli("get", "custom", "--json")
    assert result.code == 0, result.err
    entry = result.json()
    assert (entry["format"], entry["serializer_code"], entry["decoded"]) == ("code 99", 99, False)
    assert entry["fresh"] is True
    assert 80 < entry["physical_ttl"] <= 90
    assert "code 99 format: not decoded" in cli("get", "custom").out


# --- purge -------------------------------------------------------------------------------


def test_purge_without_yes_is_a_dry_run(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set_many({"product:1": 1, "product:2": 2, "other:1": 3}, ttl=60)
    before = keys_under(raw_redis, f"{prefix}:*")
    result = cli("purge", "product:")
    assert result.code == 0, result.err
    assert "dry run: 2 keys" in result.out
    assert "--yes" in result.out
    assert keys_under(raw_redis, f"{prefix}:*") == before


def test_purge_yes_unlinks_exactly_the_matching_keys(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str, redis_url: str
) -> None:
    cache.sync.set_many({f"product:{i}": i for i in range(3)}, ttl=60)
    raw_redis.set(f"{prefix}:{{product:0}}:lease", b"token", px=60_000)
    cache.sync.set_many({"productivity:1": 1, "other:product:1": 2}, ttl=60)
    with cache.sync.lock("product:1", ttl=10):  # another namespace: never matched
        neighbour = f"{prefix}x"  # a prefix that extends ours
        nested = f"{prefix}:v2"  # and one nested under it
        for other in (neighbour, nested):
            raw_redis.set(f"{other}:{{product:1}}", b"theirs", px=60_000)
        try:
            result = cli("purge", "product:", "--yes")
            assert result.code == 0, result.err
            assert "unlinked 4 keys" in result.out
            left = {k.decode() for k in keys_under(raw_redis, f"{prefix}*")}
        finally:
            raw_redis.delete(f"{neighbour}:{{product:1}}")
    assert left == {
        f"{prefix}:{{productivity:1}}",
        f"{prefix}:{{other:product:1}}",
        f"{prefix}:lock:{{product:1}}",
        f"{prefix}:lock:{{product:1}}:fence",
        f"{neighbour}:{{product:1}}",
        f"{nested}:{{product:1}}",
    }


def test_purge_treats_glob_characters_literally(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    names = ["a*b:1", "axb:1", "a?c:1", "abc:1", "[ab]:1", "a:1", "b:1", "x\\y:1", "xy:1"]
    cache.sync.set_many(dict.fromkeys(names, 1), ttl=60)
    assert "dry run: 0 keys" in cli("purge", "*").out  # no logical key starts with "*"
    for pattern, gone in [
        ("a*b", "a*b:1"),
        ("a?c", "a?c:1"),
        ("[ab]", "[ab]:1"),
        ("x\\y", "x\\y:1"),
    ]:
        result = cli("purge", pattern, "--yes")
        assert result.code == 0, result.err
        assert "unlinked 1 keys" in result.out, pattern
        names.remove(gone)
        left = {k.decode() for k in keys_under(raw_redis, f"{prefix}:*")}
        assert left == {f"{prefix}:{{{name}}}" for name in names}


def test_purge_of_more_than_1000_keys_goes_in_batches(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set_many({f"bulk:{i}": i for i in range(1_500)}, ttl=60)
    cache.sync.set("keep:1", 1, ttl=60)
    assert "dry run: 1,500 keys" in cli("purge", "bulk:").out
    result = cli("purge", "bulk:", "--yes", "--batch", "200")
    assert result.code == 0, result.err
    match = re.search(r"unlinked ([\d,]+) keys .* in (\d+) batch", result.out)
    assert match is not None, result.out
    assert match.group(1) == "1,500"
    assert int(match.group(2)) >= 8  # at most 200 keys per UNLINK
    assert keys_under(raw_redis, f"{prefix}:{{bulk:*") == set()
    assert keys_under(raw_redis, f"{prefix}:*") == {f"{prefix}:{{keep:1}}".encode()}


def test_purge_raw_takes_a_redis_key_prefix(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set("product:1", 1, ttl=60)
    raw_redis.hset(f"{prefix}:session:{{abc}}", "a", "b")
    raw_redis.hset(f"{prefix}:session:{{def}}", "a", "b")
    result = cli("purge", "--raw", f"{prefix}:session:", "--yes")
    assert result.code == 0, result.err
    assert "unlinked 2 Redis keys" in result.out
    assert keys_under(raw_redis, f"{prefix}:*") == {f"{prefix}:{{product:1}}".encode()}
    refused = cli("purge", "--raw", "", "--yes")
    assert refused.code == 2
    assert "whole database" in refused.err


# --- bloom -------------------------------------------------------------------------------


def test_bloom_warm_info_and_rebuild(
    cli: Cli,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in range(200)))
    marker = Cache()
    set_default_cache(marker)  # the app's default cache must survive an in-process run
    try:
        built = cli(
            "bloom", "warm", "products", str(ids), "--capacity", "1000", "--error-rate", "0.001"
        )
        assert default_cache() is marker
    finally:
        set_default_cache(None)
    assert built.code == 0, built.err
    assert "built Bloom filter 'products' from 200 ids" in built.out
    assert all(contains(redis_url, prefix, "products", [str(i) for i in range(200)]))

    # More ids from stdin, in batches; the geometry now comes from Redis.
    monkeypatch.setattr(sys, "stdin", io.StringIO("200\n 201 \n\n202\n"))
    warmed = cli("bloom", "warm", "products", "--batch", "2")
    assert warmed.code == 0, warmed.err
    assert "added 3 ids" in warmed.out
    assert all(contains(redis_url, prefix, "products", ["200", "201", "202"]))

    info = cli("bloom", "info", "products", "--json")
    assert info.code == 0, info.err
    facts = info.json()
    assert (facts["capacity"], facts["error_rate"], facts["state"]) == (1_000, 0.001, "ready")
    assert facts["bits_set"] > 0
    assert 0 < facts["fill_ratio"] < 1
    assert facts["estimated_items"] == pytest.approx(203, rel=0.05)
    assert facts["adds_counted"] == 203
    assert facts["memory_bytes"] >= facts["size_bytes"]
    generation = facts["generation"]
    human = cli("bloom", "info", "products")
    assert "bits set" in human.out
    assert "full" in human.out

    # Rebuild from half of the ids: the others are gone, every kept one is there.
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{i}\n" for i in range(100))))
    rebuilt = cli("bloom", "rebuild", "products")
    assert rebuilt.code == 0, rebuilt.err
    assert "rebuilt Bloom filter 'products' from 100 ids" in rebuilt.out
    kept = contains(redis_url, prefix, "products", [str(i) for i in range(100)])
    removed = contains(redis_url, prefix, "products", [str(i) for i in range(100, 203)])
    assert all(kept)
    assert sum(removed) <= 2  # false positives at p = 0.001: about 0.1 expected
    after = cli("bloom", "info", "products", "--json").json()
    assert after["generation"] > generation
    assert after["estimated_items"] == pytest.approx(100, rel=0.05)


def test_bloom_commands_on_a_filter_that_does_not_exist(cli: Cli, tmp_path: Path) -> None:
    missing = cli("bloom", "info", "nothing")
    assert missing.code == 1
    assert "no Bloom filter 'nothing'" in missing.err
    no_geometry = cli("bloom", "warm", "nothing", str(tmp_path / "absent.txt"))
    assert no_geometry.code == 2
    assert "--capacity and --error-rate" in no_geometry.err
    no_file = cli(
        "bloom",
        "warm",
        "nothing",
        str(tmp_path / "absent.txt"),
        "--capacity",
        "10",
        "--error-rate",
        "0.1",
    )
    assert no_file.code == 2
    assert "cannot read ids" in no_file.err


def test_bloom_geometry_cannot_change_from_the_cli(cli: Cli, cache: Cache, tmp_path: Path) -> None:
    cache.bloom("products", capacity=1_000, error_rate=0.01).sync.rebuild(range(10))
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    result = cli("bloom", "rebuild", "products", str(ids), "--capacity", "5000")
    assert result.code == 2
    assert "same geometry" in result.err
    same = cli("bloom", "rebuild", "products", str(ids), "--capacity", "1000")
    assert same.code == 0, same.err


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["get", "product:5"],
        ["purge", "product:", "--yes"],
        ["bloom", "info", "products"],
        ["bloom", "rebuild", "products", "--capacity", "10", "--error-rate", "0.1"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_an_unreachable_redis_exits_2_with_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    assert main([*command, "--url", url]) == 2
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"cachekit: cannot reach Redis at {url}: ")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "unsupported URL scheme 'http'"),
        ("redis://127.0.0.1:6379/0?bogus=1", "unknown option 'bogus'"),
        ("redis://127.0.0.1:notaport/0", "invalid Redis URL"),
        ("memory://", "memory:// lives inside one process"),
        ("redis://:secret@127.0.0.1:notaport/0", "redis://:***@127.0.0.1:notaport/0"),
    ],
)
def test_a_bad_url_exits_2_with_the_reason(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--url", url]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "secret" not in err
    assert "Traceback" not in err


def test_a_bad_prefix_or_usage_exits_2(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--url", redis_url, "--prefix", "bad prefix"]) == 2
    assert "invalid key prefix" in capsys.readouterr().err
    assert main(["purge"]) == 2  # argparse explains; main returns instead of exiting
    assert "required: PREFIX" in capsys.readouterr().err
    assert main(["purge", "x", "--batch", "0"]) == 2
    assert main(["--help"]) == 0
    assert "usage: cachekit" in capsys.readouterr().out


def test_bigkeys_ranks_the_largest_entries_per_namespace_and_flags_big_ones(
    cli: Cli, cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    cache.sync.set_many({f"small:{i}": i for i in range(20)}, ttl=60)
    cache.sync.set("report:2026", "x" * 50_000, ttl=60)  # a string over 10 KB
    raw_redis.hset(f"{prefix}:cart:{{user:1}}", mapping={f"sku{i}": 1 for i in range(6_000)})
    raw_redis.hset(f"{prefix}:cart:{{user:2}}", mapping={"sku": 1})
    raw_redis.set(f"{prefix}:session:{{s1}}", b"y" * 100)

    result = cli("bigkeys", "--json", "--top", "2", "--count", "7")
    assert result.code == 0, result.err
    report = result.json()
    assert report["scanned"] == 24
    assert report["scan_calls"] > 1  # COUNT 7 over 24 keys: paged, never KEYS
    values = report["namespaces"]["value"]
    assert values["keys"] == 21
    biggest = values["largest"]
    assert len(biggest) == 2  # --top
    assert biggest[0]["key"] == f"{prefix}:{{report:2026}}"
    assert biggest[0]["type"] == "string"
    assert biggest[0]["length"] > 50_000
    assert biggest[0]["bytes"] >= biggest[1]["bytes"]
    [cart, _] = report["namespaces"]["cart"]["largest"]
    assert (cart["key"], cart["type"], cart["length"]) == (
        f"{prefix}:cart:{{user:1}}",
        "hash",
        6_000,
    )
    assert report["over"] == {"strings": 1, "aggregates": 1}
    flagged = {entry["key"] for entry in report["flagged"]}
    assert flagged == {f"{prefix}:{{report:2026}}", f"{prefix}:cart:{{user:1}}"}

    human = cli("bigkeys", "--interval", "0.001")
    assert human.code == 0, human.err
    assert "1 strings over 10.0 KiB" in human.out
    assert "1 hashes, lists, sets or sorted sets over 5,000 elements" in human.out
    assert re.search(rf"^{re.escape(prefix)}:cart:{{user:1}}\s+cart\s+hash\s", human.out, re.M)
    assert "cachekit unlink KEY" in human.out


def test_bigkeys_limits_are_options(cli: Cli, raw_redis: redis.Redis, prefix: str) -> None:
    raw_redis.set(f"{prefix}:{{a}}", b"z" * 200)
    raw_redis.rpush(f"{prefix}:{{b}}", *range(30))
    report = cli("bigkeys", "--json", "--string-bytes", "100", "--fields", "20").json()
    assert report["over"] == {"strings": 1, "aggregates": 1}
    assert report["limits"] == {"string_bytes": 100, "fields": 20}


def test_bigkeys_on_an_empty_prefix(cli: Cli) -> None:
    result = cli("bigkeys")
    assert result.code == 0
    assert "nothing under this prefix" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "-1"], "between 0 and 60"),
        (["--interval", "soon"], "not a number of seconds"),
        (["--top", "0"], "at least 1"),
        (["--fields", "many"], "not a whole number"),
    ],
)
def test_bigkeys_refuses_bad_options(
    cli: Cli, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli("bigkeys", *args)
    assert result.code == 2
    assert message in result.err


def test_unlink_deletes_named_keys_under_the_prefix_only(
    cli: Cli, raw_redis: redis.Redis, prefix: str
) -> None:
    raw_redis.hset(f"{prefix}:cart:{{user:1}}", mapping={"a": 1})
    raw_redis.set(f"{prefix}:{{keep}}", b"1")
    raw_redis.set(f"other{prefix}", b"foreign")
    try:
        refused = cli("unlink", f"other{prefix}")
        assert refused.code == 2
        assert "not under the prefix" in refused.err
        assert raw_redis.exists(f"other{prefix}")

        done = cli("unlink", f"{prefix}:cart:{{user:1}}", f"{prefix}:cart:{{user:1}}")
        assert (done.code, done.out.strip()) == (0, "unlinked 1 of 1 key(s)")
        assert not raw_redis.exists(f"{prefix}:cart:{{user:1}}")
        assert raw_redis.exists(f"{prefix}:{{keep}}")
        assert cli("unlink", f"{prefix}:cart:{{user:1}}").code == 1  # nothing was there
    finally:
        raw_redis.delete(f"other{prefix}")
