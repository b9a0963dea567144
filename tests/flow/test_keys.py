"""Cache keys: templates, the default key, escaping, the key space and argument binding."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachekit import Cache
from cachekit.exceptions import ConfigurationError, KeyTemplateError
from cachekit.flow.keys import (
    MAX_KEY_BYTES,
    MAX_PREFIX_CHARS,
    KeyBuilder,
    KeySpace,
    _Binder,
    escape,
)

MODULE = __name__


def get_product(product_id: int, currency: str = "EUR", *, fresh: bool = False) -> None:
    return None


def pair(a: object, b: object = 2) -> None:
    return None


def user_key(a: str, b: str) -> None:
    return None


def kb(func: Callable[..., Any], template: str | None) -> KeyBuilder:
    return KeyBuilder.for_function(func, template)


# --------------------------------------------------------------------------- templates


def test_template_is_the_same_for_positional_keyword_and_default_forms() -> None:
    builder = kb(get_product, "product:{product_id}:{currency}")
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((5,), {}),
        ((), {"product_id": 5}),
        ((5, "EUR"), {}),
        ((5,), {"currency": "EUR"}),
        ((), {"currency": "EUR", "product_id": 5}),
        ((), {"product_id": 5, "currency": "EUR", "fresh": True}),
    ]
    assert {builder.build(args, kwargs) for args, kwargs in calls} == {"product:5:EUR"}
    assert builder.build((5, "USD"), {}) == "product:5:USD"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.integers()), st.one_of(st.text(), st.integers()))
def test_template_key_is_the_same_on_the_all_positional_fast_path(a: object, b: object) -> None:
    """``pair(a, b)`` formats straight from ``args``; every other spelling binds first."""
    builder = kb(pair, "p%:{a}:{b}|")
    fast = builder.build((a, b), {})
    assert fast == f"p%:{escape(a)}:{escape(b)}|"
    assert builder.build((a,), {"b": b}) == fast
    assert builder.build((), {"b": b, "a": a}) == fast
    if b == 2:
        assert builder.build((a,), {}) == fast


def test_template_key_through_the_decorator(memory_cache: Cache) -> None:
    @memory_cache.cached(key="product:{product_id}")
    def load(product_id: int, currency: str = "EUR") -> int:
        return product_id

    assert load.key(5) == load.key(product_id=5) == load.key(5, "EUR") == "product:5"
    assert load.key(5, currency="USD") == "product:5"


def test_default_key_is_module_qualname_and_canonical_json() -> None:
    builder = kb(get_product, None)
    expected = f'{MODULE}.get_product:5:"EUR":false'
    assert builder.build((5,), {}) == expected
    assert builder.build((), {"product_id": 5}) == expected
    assert builder.build((5, "EUR"), {}) == expected
    assert builder.build((5,), {"currency": "EUR"}) == expected
    assert builder.build((5, "EUR"), {"fresh": False}) == expected
    assert builder.build((), {"product_id": 5, "currency": "EUR", "fresh": False}) == expected


def test_default_key_of_a_method_uses_the_qualname() -> None:
    class Repo:
        def find(self, n: int) -> None:
            return None

    builder = kb(Repo.find, None)
    assert builder.build((None, 3), {}) == f"{MODULE}.{Repo.find.__qualname__}:null:3"
    assert ".<locals>.Repo.find:" in builder.build((None, 3), {})


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"currency": "EUR", "product_id": 5}),
        ((5,), {"fresh": False, "currency": "EUR"}),
        ((5,), {"fresh": False}),
    ],
)
def test_default_key_does_not_depend_on_keyword_order(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    builder = kb(get_product, None)
    assert builder.build(args, kwargs) == f'{MODULE}.get_product:5:"EUR":false'


def test_different_calls_never_share_a_default_key() -> None:
    builder = kb(pair, None)
    assert builder.build((), {"b": 1, "a": 2}) != builder.build((1, 2), {})


def test_decorated_function_returns_the_value_of_its_own_arguments(memory_cache: Cache) -> None:
    @memory_cache.cached()
    def minus(a: int, b: int = 0) -> int:
        return a - b

    assert minus(1, 2) == -1
    assert minus(b=1, a=2) == 1


def test_default_key_tells_str_from_int_and_escapes_json() -> None:
    builder = kb(pair, None)
    assert builder.build(("1",), {}) == f'{MODULE}.pair:"1":2'
    assert builder.build((1,), {}) == f"{MODULE}.pair:1:2"
    assert builder.build((1.0,), {}) == f"{MODULE}.pair:1.0:2"
    assert builder.build((None,), {}) == f"{MODULE}.pair:null:2"
    assert builder.build(({"b": 1, "a": [1, "x y"]},), {}) == (
        f'{MODULE}.pair:%7B"a"%3A[1,"x%20y"],"b"%3A1%7D:2'
    )
    # Dict key order does not matter: canonical JSON sorts keys.
    assert builder.build(({"a": 1, "b": 2},), {}) == builder.build(({"b": 2, "a": 1},), {})
    assert builder.build(("a:b",), {}) != builder.build(("a", "b"), {})


def test_default_key_with_var_args_and_var_kwargs() -> None:
    def search(*terms: str, **filters: object) -> None:
        return None

    builder = kb(search, None)
    key = builder.build(("a", "b"), {"y": 2, "x": 1})
    assert key == f'{MODULE}.{search.__qualname__}:["a","b"]:%7B"x"%3A1,"y"%3A2%7D'
    assert builder.build(("a", "b"), {"x": 1, "y": 2}) == key
    assert builder.build(("a",), {"b": 1}) != builder.build(("a", "b"), {})


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", 2**70, {1: "int key"}])
def test_default_key_rejects_values_without_a_canonical_form(value: object) -> None:
    builder = kb(pair, None)
    with pytest.raises(KeyTemplateError, match="key=") as info:
        builder.build((value,), {})
    assert isinstance(info.value, TypeError)
    assert "'a'" in str(info.value)
    assert 'key="pair:{a.id}"' in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "product:{nope}",
        "product:{product_id!r}",
        "product:{product_id!s}",
        "product:{product_id[0]}",
        "product:{product_id.x[0]}",
        "product:{{product_id}}",
        "product:{{literal",
        "product:literal}}",
        "product:{}",
        "product:{0}",
        "product:{nope.id}",
    ],
)
def test_template_errors_surface_at_decoration(template: str, memory_cache: Cache) -> None:
    with pytest.raises(ConfigurationError):
        kb(get_product, template)
    decorate = memory_cache.cached(key=template)
    with pytest.raises(ConfigurationError):
        decorate(get_product)


@pytest.mark.parametrize("template", ["product:{", "product:}", "product:{product_id"])
def test_malformed_templates_are_rejected(template: str) -> None:
    with pytest.raises(ValueError, match=r"[Ss]ingle|expected|unmatched|[Bb]race"):
        kb(get_product, template)


def test_nested_field_in_a_format_spec_is_rejected_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        kb(pair, "x:{a:{b}}")


@dataclass
class Profile:
    name: str


@dataclass
class User:
    id: int
    profile: Profile | None


def show(user: User, n: int = 5) -> None:
    return None


def test_attribute_fields_and_format_specs() -> None:
    user = User(7, Profile("Ann Lee"))
    assert kb(show, "user:{user.id}").build((user,), {}) == "user:7"
    assert kb(show, "user:{user.profile.name}").build((user,), {}) == "user:Ann%20Lee"
    assert kb(show, "n:{n:04d}").build((user,), {}) == "n:0005"
    assert kb(show, "n:{n:>3}").build((user, 12), {}) == "n:%2012"
    assert kb(show, "u{user.id:03d}-{n}").build((user,), {"n": 1}) == "u007-1"


def test_missing_attribute_is_a_key_template_error() -> None:
    builder = kb(show, "user:{user.profile.name}")
    with pytest.raises(KeyTemplateError, match="name"):
        builder.build((User(7, None),), {})
    with pytest.raises(KeyTemplateError):
        kb(show, "user:{user.nope}").build((User(7, None),), {})


def test_format_spec_mismatch_is_a_key_template_error() -> None:
    with pytest.raises(KeyTemplateError):
        kb(show, "n:{n:04d}").build((None, "five"), {})


def test_template_keys_are_identical_for_def_and_async_def(memory_cache: Cache) -> None:
    @memory_cache.cached(key="p:{x}")
    def sync(x: int) -> int:
        return x

    @memory_cache.cached(key="p:{x}")
    async def asynchronous(x: int) -> int:
        return x

    assert sync.key(3) == asynchronous.key(x=3) == "p:3"


# --------------------------------------------------------------------------- escaping


def test_escaping_keeps_components_apart() -> None:
    builder = kb(user_key, "user:{a}:{b}")
    assert builder.build(("1:2", "3"), {}) == "user:1%3A2:3"
    assert builder.build(("1", "2:3"), {}) == "user:1:2%3A3"
    assert builder.build(("1:2", "3"), {}) != builder.build(("1", "2:3"), {})


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain-Value_1.2", "plain-Value_1.2"),
        ("a b", "a%20b"),
        ("a\nb", "a%0Ab"),
        ("tab\t", "tab%09"),
        ("{x}", "%7Bx%7D"),
        ("100%", "100%25"),
        ("%3A", "%253A"),
        ("a:b", "a%3Ab"),
        ("nul\x00", "nul%00"),
        ("del\x7f", "del%7F"),
        ("nbsp\u00a0", "nbsp%C2%A0"),
        ("ideographic\u3000space", "ideographic%E3%80%80space"),
        ("line\u2028sep", "line%E2%80%A8sep"),
        ("caf\u00e9", "caf\u00e9"),
        ("\U0001f600", "\U0001f600"),
        (5, "5"),
        (-5, "-5"),
        (True, "True"),
        (1.5, "1.5"),
        (None, "None"),
        (b"a b", "b'a%20b'"),
    ],
)
def test_escape(value: object, escaped: str) -> None:
    assert escape(value) == escaped


def _unescape(text: str) -> str:
    return re.sub(
        r"(?:%[0-9A-F]{2})+",
        lambda m: bytes.fromhex(m.group().replace("%", "")).decode(),
        text,
    )


_SAFE_PREFIXES = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}(:[A-Za-z0-9_.\-]{1,8}){0,2}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_escape_output_has_no_separators_or_whitespace(text: str) -> None:
    out = escape(text)
    assert not any(c in out for c in ":{}")
    assert not any(c.isspace() for c in out)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)
    # '%' only ever starts an escape.
    assert re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", out)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_escape_is_reversible_hence_injective(text: str) -> None:
    assert _unescape(escape(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_escape_distinct_inputs_give_distinct_outputs(a: str, b: str) -> None:
    assert (escape(a) == escape(b)) == (a == b)


@settings(max_examples=300, deadline=None)
@given(_SAFE_PREFIXES, st.text(), st.text())
def test_value_keys_never_reach_another_namespace(prefix: str, a: str, b: str) -> None:
    space = KeySpace(prefix)
    key = space.value(kb(user_key, "user:{a}:{b}").build((a, b), {}))
    assert key.startswith(prefix + ":{")
    assert re.match(re.escape(prefix) + r":[^{]", key) is None
    for namespace in ("lock", "session", "bloom", "lease"):
        assert not key.startswith(f"{prefix}:{namespace}:")
        assert not key.startswith(space.namespaced(namespace, "")[:-2])
    # One hash tag, and it spans the whole logical key.
    assert key.count("{") == 1
    assert key.count("}") == 1
    assert key.endswith("}")
    assert len(key.encode()) <= MAX_KEY_BYTES


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc80\udc81"])
def test_escape_output_is_always_utf8(text: str) -> None:
    escape(text).encode()


# --------------------------------------------------------------------------- key space


def test_key_space_value_and_namespaced() -> None:
    space = KeySpace("shop:v2")
    assert space.prefix == "shop:v2"
    assert space.value("product:5") == "shop:v2:{product:5}"
    assert space.namespaced("lock", "report") == "shop:v2:lock:{report}"


@pytest.mark.parametrize(
    "prefix",
    ["", " ", "a b", "a{b", "a}b", "{a}", "a:", ":a", "a::b", "a\n", "caf\u00e9", "a/b", "a*"],
)
def test_key_space_rejects_bad_prefixes(prefix: str, memory_cache: Cache) -> None:
    with pytest.raises(ConfigurationError, match="invalid key prefix"):
        KeySpace(prefix)
    with pytest.raises(ConfigurationError):
        Cache(prefix=prefix)


@pytest.mark.parametrize("prefix", ["a", "shop", "shop:v2", "a.b-c_d", "A1:b2:c3"])
def test_key_space_accepts_good_prefixes(prefix: str) -> None:
    assert KeySpace(prefix).value("k") == prefix + ":{k}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_key_of_exactly_max_bytes_is_kept_and_one_more_is_shortened() -> None:
    space = KeySpace("shop")
    fits = "x" * (MAX_KEY_BYTES - len("shop:{}"))
    assert space.value(fits) == "shop:{" + fits + "}"
    assert len(space.value(fits).encode()) == MAX_KEY_BYTES
    longer = fits + "y"
    assert space.value(longer) != "shop:{" + longer + "}"
    assert space.value(longer).endswith(_digest(longer) + "}")


def test_long_key_is_shortened_with_a_readable_head_and_a_digest() -> None:
    space = KeySpace("shop")
    logical = "report:" + "x" * 300
    key = space.value(logical)
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert key.startswith("shop:{report:xxxxxxxx")
    assert key.endswith("#" + _digest(logical) + "}")
    head = key[len("shop:{") : -len(_digest(logical)) - 2]
    assert logical.startswith(head)
    assert len(head) >= 100


def test_long_keys_sharing_a_long_head_still_differ() -> None:
    space = KeySpace("shop")
    common = "q:" + "a" * 298
    one, two = space.value(common + "1"), space.value(common + "2")
    assert one != two
    assert one[:-66] == two[:-66]


@pytest.mark.parametrize(
    "logical",
    [
        "\u00e9" * 150,
        "a" + "\U0001f600" * 100,
        "ab" + "\U0001f600" * 100,
        "abc" + "\u20ac" * 100,
        "x" * 127 + "\U0001f600" * 30,
    ],
)
def test_long_multibyte_keys_are_cut_on_a_character_boundary(logical: str) -> None:
    key = KeySpace("shop").value(logical)
    raw = key.encode()
    assert len(raw) <= MAX_KEY_BYTES
    assert raw.decode("utf-8") == key
    assert "\ufffd" not in key
    head = key[len("shop:{") : -len(_digest(logical)) - 2]
    assert logical.startswith(head)
    assert len(head.encode()) > MAX_KEY_BYTES - len("shop:{}#") - 64 - 4
    assert key.endswith("#" + _digest(logical) + "}")


@settings(max_examples=300, deadline=None)
@given(_SAFE_PREFIXES, st.text(min_size=0, max_size=400))
def test_value_keys_always_fit(prefix: str, text: str) -> None:
    logical = escape(text)
    key = KeySpace(prefix).value(logical)
    assert len(key.encode()) <= MAX_KEY_BYTES
    if key != f"{prefix}:{{{logical}}}":
        assert key.endswith("#" + _digest(logical) + "}")


def test_long_namespaced_names_are_shortened() -> None:
    name = "n" * 400
    key = KeySpace("shop").namespaced("lock", name)
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert key.startswith("shop:lock:{nnnn")
    assert key.endswith("#" + _digest(name) + "}")


def test_longest_prefix_still_gives_keys_within_the_limit() -> None:
    space = KeySpace("p" * MAX_PREFIX_CHARS)
    assert len(space.value("x" * 300).encode()) <= MAX_KEY_BYTES
    assert len(space.namespaced("session", "x" * 300).encode()) <= MAX_KEY_BYTES
    with pytest.raises(ConfigurationError, match="at most"):
        KeySpace("p" * (MAX_PREFIX_CHARS + 1))


# --------------------------------------------------------------------------- binding


def f_simple(a: int, b: int = 2, c: int = 3) -> None:
    return None


def f_mixed(a: int, b: int, /, c: int, d: int = 4, *, e: int, g: int = 7) -> None:
    return None


def f_posonly(a: int, /, b: int = 2) -> None:
    return None


def f_kwonly(*, a: int, b: int = 2) -> None:
    return None


def f_none() -> None:
    return None


def f_varargs(a: int, *args: int, b: int = 2, **kwargs: int) -> None:
    return None


def f_varkw(a: int, /, **kwargs: int) -> None:
    return None


SIMPLE = [f_simple, f_mixed, f_posonly, f_kwonly, f_none]
VARIADIC = [f_varargs, f_varkw]
NAMES = ["a", "b", "c", "d", "e", "g", "zz"]


def _call_shapes() -> list[tuple[tuple[int, ...], dict[str, int]]]:
    shapes = []
    for n_args in range(6):
        args = tuple(10 + i for i in range(n_args))
        for size in range(len(NAMES) + 1):
            for names in itertools.combinations(NAMES, size):
                shapes.append((args, {name: 100 + i for i, name in enumerate(names)}))
                if size > 1:  # and in reverse order
                    shapes.append(
                        (args, {name: 100 + i for i, name in reversed(list(enumerate(names)))})
                    )
    return shapes


CALL_SHAPES = _call_shapes()


def _reference(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


@pytest.mark.parametrize("func", SIMPLE + VARIADIC, ids=lambda f: f.__name__)
def test_binder_matches_signature_bind(
    func: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_calls: list[int] = []
    original = _Binder._slow

    def counting_slow(
        self: _Binder, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        slow_calls.append(1)
        return original(self, args, kwargs)

    monkeypatch.setattr(_Binder, "_slow", counting_slow)
    binder = _Binder(inspect.signature(func))
    valid = invalid = 0
    for args, kwargs in CALL_SHAPES:
        expected = _reference(func, args, kwargs)
        if expected is None:
            invalid += 1
            with pytest.raises(TypeError):
                func(*args, **kwargs)
            with pytest.raises(TypeError):
                binder.bind(args, kwargs)
            continue
        valid += 1
        func(*args, **kwargs)  # the reference agrees with the interpreter
        before = len(slow_calls)
        assert binder.bind(args, kwargs) == expected, (args, kwargs)
        if func in SIMPLE:
            assert len(slow_calls) == before, f"valid call {args, kwargs} took the slow path"
    assert valid > 0
    assert invalid > 0 or func is f_varkw
    if func in VARIADIC:
        assert len(slow_calls) == valid + invalid


def test_binder_does_not_mutate_the_callers_kwargs() -> None:
    binder = _Binder(inspect.signature(f_simple))
    kwargs = {"b": 5}
    assert binder.bind((1,), kwargs) == {"a": 1, "b": 5, "c": 3}
    assert kwargs == {"b": 5}


def test_binder_keeps_mutable_defaults_identical() -> None:
    default: list[int] = []

    def f(a: int, acc: list[int] = default) -> None:
        return None

    assert _Binder(inspect.signature(f)).bind((1,), {})["acc"] is default


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1, 2, 3, 4), {}),
        ((1,), {"a": 1}),
        ((1,), {"zz": 1}),
    ],
)
def test_decorated_call_with_wrong_arguments_raises_type_error(
    memory_cache: Cache, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    calls: list[int] = []

    @memory_cache.cached()
    def f(a: int, b: int = 2, c: int = 3) -> int:
        calls.append(a)
        return a

    with pytest.raises(TypeError):
        f(*args, **kwargs)
    assert calls == []


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((5,), {}), (("a:b c",), {}), ((), {"pid": 7}), (("x" * 300,), {}), (("é" * 60,), {})],
)
def test_storage_key_is_the_key_space_value_of_the_built_key(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    def product(pid: object) -> None: ...

    builder = KeyBuilder.for_function(product, "product:{pid}")
    space = KeySpace("shop")
    assert builder.storage_key(space, args, kwargs) == space.value(builder.build(args, kwargs))
