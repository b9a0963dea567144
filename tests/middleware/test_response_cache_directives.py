"""The response cache's HTTP rules as pure functions: no Redis, no ASGI."""

from __future__ import annotations

import pytest

from cachekit.flow.keys import KeySpace
from cachekit.middleware.directives import (
    Exchange,
    accept_encoding_key,
    etag_matches,
    freshness,
    normalize_query,
    parse_cache_control,
    parse_vary,
    refusal,
    stale_windows,
)
from cachekit.middleware.entry import (
    Entry,
    Record,
    RequestKeys,
    content_etag,
    decode_entry,
    decode_record,
    encode_entry,
    encode_record,
    vary_values,
)

NOW = 1_700_000_000.0


def test_cache_control_is_parsed_case_insensitively_with_quoted_arguments() -> None:
    cc = parse_cache_control('Public, MAX-AGE=60, private="set-cookie", , s-maxage="5"')
    assert cc == {"public": None, "max-age": "60", "private": "set-cookie", "s-maxage": "5"}


def test_a_duplicate_directive_cannot_loosen_the_first() -> None:
    assert parse_cache_control("max-age=0, max-age=3600")["max-age"] == "0"


def test_vary_star_and_names() -> None:
    assert parse_vary("Accept-Encoding, X-Lang ,accept-encoding") == ("accept-encoding", "x-lang")
    assert parse_vary("accept, *") == ("*",)
    assert parse_vary(None) == ()


def test_query_normalization_sorts_by_name_and_keeps_repeats_in_order() -> None:
    assert normalize_query(b"b=2&a=1") == normalize_query(b"a=1&b=2") == b"a=1&b=2"
    assert normalize_query(b"x=2&a=1&x=1&&") == b"a=1&x=2&x=1"
    assert normalize_query(b"x=1&x=2") != normalize_query(b"x=2&x=1")


def test_accept_encoding_gives_one_variant_per_accepted_coding_set() -> None:
    codings = ("gzip", "br")
    assert accept_encoding_key("gzip, deflate", codings) == "gzip"
    assert accept_encoding_key("br;q=0.5, gzip", codings) == accept_encoding_key(
        "gzip, br", codings
    )
    assert accept_encoding_key("gzip;q=0", codings) == ""
    assert accept_encoding_key(None, codings) == ""


@pytest.mark.parametrize(
    ("status", "headers", "exchange", "reason"),
    [
        (200, [], Exchange(), None),
        (404, [], Exchange(), "status"),
        (206, [(b"content-range", b"bytes 0-1/2")], Exchange(statuses=(200, 206)), "partial"),
        (200, [(b"cache-control", b"no-store")], Exchange(), "no-store"),
        (200, [(b"cache-control", b"private")], Exchange(), "private"),
        (200, [(b"cache-control", b"no-cache")], Exchange(), None),  # stored, revalidated
        (200, [(b"set-cookie", b"sid=1")], Exchange(), "set-cookie"),
        (200, [(b"vary", b"*")], Exchange(), "vary-star"),
        (200, [], Exchange(authorized=True), "authorization"),
        (200, [(b"cache-control", b"public")], Exchange(authorized=True), "authorization"),
        (
            200,
            [(b"cache-control", b"public")],
            Exchange(authorized=True, shareable_authorized=True),
            None,
        ),
        (200, [], Exchange(authorized=True, shareable_authorized=True), "authorization"),
        (200, [(b"content-type", b"text/event-stream")], Exchange(), "event-stream"),
        (200, [(b"content-length", b"11")], Exchange(max_body_size=10), "too-large"),
        (200, [], Exchange(request_no_store=True), "request-no-store"),
    ],
)
def test_refusal_reasons(
    status: int, headers: list[tuple[bytes, bytes]], exchange: Exchange, reason: str | None
) -> None:
    assert refusal(status, headers, exchange) == reason


def test_freshness_prefers_s_maxage_then_max_age_then_expires_then_the_default() -> None:
    assert freshness(parse_cache_control("max-age=5, s-maxage=9"), [], 60, NOW) == 9
    assert freshness(parse_cache_control("max-age=5"), [], 60, NOW) == 5
    assert freshness({}, [], 60, NOW) == 60
    date = b"Sun, 06 Nov 1994 08:49:37 GMT"
    expires = b"Sun, 06 Nov 1994 08:50:37 GMT"
    assert freshness({}, [(b"date", date), (b"expires", expires)], 60, NOW) == 60.0
    assert freshness({}, [(b"expires", b"0")], 60, NOW) == 0.0  # invalid: already expired
    assert freshness(parse_cache_control("max-age=bogus"), [], 60, NOW) == 0.0


def test_stale_windows_directives_win_and_must_revalidate_forbids_them() -> None:
    cc = parse_cache_control("max-age=1, stale-while-revalidate=7")
    assert stale_windows(cc, 3, 4) == (7.0, 4.0)
    for forbids in ("must-revalidate", "proxy-revalidate", "s-maxage=5", "no-cache"):
        assert stale_windows(parse_cache_control(forbids), 3, 4) == (0.0, 0.0)


def test_etag_comparison_is_weak_as_if_none_match_requires() -> None:
    assert etag_matches('"a", W/"b"', '"b"')
    assert etag_matches("*", '"x"')
    assert not etag_matches('"a"', '"b"')
    assert not etag_matches(None, '"b"')


def test_content_etag_is_strong_quoted_and_stable() -> None:
    tag = content_etag(b"hello")
    assert tag == content_etag(b"hello")
    assert tag.startswith('"')
    assert tag.endswith('"')
    assert tag != content_etag(b"hello!")


def test_keys_separate_hosts_schemes_queries_and_variants() -> None:
    space = KeySpace("t")

    def target(scheme: str, host: bytes, query: bytes) -> RequestKeys:
        return RequestKeys.of(space, scheme, host, b"/p", query, "/p")

    base = target("http", b"a.test", b"x=1")
    assert base.record == target("http", b"A.TEST", b"x=1").record
    others = [target("https", b"a.test", b"x=1"), target("http", b"b.test", b"x=1")]
    others.append(target("http", b"a.test", b"x=2"))
    assert len({base.record, *(t.record for t in others)}) == 4
    assert base.generation == others[0].generation  # invalidation is per path
    headers = [(b"accept-encoding", b"gzip")]
    gzip = base.variant_key(vary_values(("accept-encoding",), headers, ("gzip",)))
    plain = base.variant_key(vary_values(("accept-encoding",), [], ("gzip",)))
    absent = base.variant_key(vary_values(("x-lang",), [], ()))
    empty = base.variant_key(vary_values(("x-lang",), [(b"x-lang", b"")], ()))
    assert len({gzip, plain, absent, empty}) == 4


def test_entries_and_records_round_trip_and_check_key_and_stamp() -> None:
    space = KeySpace("t")
    target = RequestKeys.of(space, "http", b"a.test", b"/p", b"", "/p")
    entry = Entry(
        status=200,
        headers=((b"content-type", b"application/octet-stream"),),
        body=bytes(range(256)),
        etag='"x"',
        url=target.url,
        vary=(("x-lang", None),),
        shared_authorized=False,
        created=NOW,
        expires=NOW + 60,
        stale_while_revalidate=5,
    )
    key = target.variant_key(entry.vary)
    data = encode_entry(key, entry, stamp=7)
    assert decode_entry(key, data, 7) == entry
    assert decode_entry(key, data, 8) is None  # invalidated since: another generation
    assert decode_entry(target.record, data, 7) is None  # copied to another key (R10)
    assert decode_entry(key, data[:-1], 7) is None  # truncated
    record = encode_record(target.record, Record(("x-lang",)), now=NOW, stamp=7)
    assert decode_record(target.record, record, 7) == Record(("x-lang",))
    assert decode_record(target.record, b"garbage", 7) is None


def test_must_understand_replaces_no_store_only_for_statuses_this_cache_knows() -> None:
    cc = [(b"cache-control", b"max-age=60, no-store, must-understand")]
    everything = Exchange(statuses=range(200, 600))
    assert refusal(200, cc, everything) is None
    assert refusal(599, cc, everything) == "must-understand"
    assert refusal(599, [(b"cache-control", b"max-age=60, must-understand")], everything) == (
        "must-understand"
    )
    assert refusal(200, [(b"cache-control", b"no-store")], everything) == "no-store"
