"""AppSpec loading and validation: shipped apps load; every kind of bad file is one clear line."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from leanstack.microservices.app import (
    APPS_DIR,
    AppSpecError,
    Call,
    app_names,
    load_app,
    parse_app,
)

TINY = {
    "name": "tiny",
    "services": {
        "front": {"endpoints": {"get": {"cpu_ms": 0.5, "calls": [["back.work"], ["cache.get"]]}}},
        "back": {"replicas": 2, "endpoints": {"work": {"work": "hash", "cpu_ms": 1.0}}},
        "cache": {"kind": "memcached"},
    },
    "classes": {"get": {"entry": "front.get", "weight": 1, "sla": {"percentile": 99, "ms": 20}}},
}


def tiny(**patch) -> dict:
    d = copy.deepcopy(TINY)
    for dotted, value in patch.items():
        *path, last = dotted.split("__")
        node = d
        for k in path:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return d


def test_shipped_apps_load_with_deathstarbench_mixes():
    assert app_names() == ["hotel-reservation", "media-service", "social-network", "video-pipeline"]
    social = load_app("social-network")
    assert social.mix() == pytest.approx(
        {"read-home-timeline": 0.6, "read-user-timeline": 0.3, "compose-post": 0.1})
    hotel = load_app("hotel-reservation")
    assert hotel.mix()["search"] == pytest.approx(0.6)
    assert hotel.mix()["login"] == pytest.approx(0.005)
    video = load_app("video-pipeline")
    assert video.classes["process-video"].wait == "pipeline"
    assert video.services["scene-split"].queue == "video-queue"


def test_social_network_has_the_deathstarbench_edges():
    app = load_app("social-network")
    compose = app.endpoint(Call("compose-post", "compose"))
    first = {c.service for c in compose.groups[0]}
    assert first == {"text", "user", "unique-id", "media"}
    assert [c.service for c in compose.groups[1]] == ["post-storage"]
    text = app.endpoint(Call("text", "process"))
    assert {c.service for c in text.calls} == {"url-shorten", "user-mention"}
    kinds = {s.kind for s in app.services.values()}
    assert kinds == {"logic", "redis", "memcached"}


def test_load_by_path_and_defaults(tmp_path: Path):
    p = APPS_DIR / "video-pipeline.toml"
    app = load_app(p)
    assert app.source == str(p)
    spec = parse_app(TINY)
    assert spec.services["front"].replicas == 1
    assert spec.services["front"].max_cpu == 1.0
    assert spec.services["back"].endpoints["work"].cv == 0.5
    assert spec.classes["get"].sla.key == "p99"
    assert spec.classes["get"].priority == 1


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"services__front__endpoints__get__calls": [["ghost.work"]]}, "unknown service 'ghost'"),
        ({"services__front__endpoints__get__calls": [["back.nope"]]}, "has no endpoint 'nope'"),
        ({"services__front__endpoints__get__calls": [["cache.lpush"]]}, "has no endpoint 'lpush'"),
        ({"classes__get__sla": None}, "missing SLA"),
        ({"classes__get__sla": {"percentile": 100, "ms": 5}}, "not a measured percentile"),
        ({"classes__get__sla": {"percentile": 75, "ms": 5}}, "use one of 50, 90, 95, 99, 99.9"),
        ({"services__back__endpoints__work__cpu_ms": float("nan")}, "number (finite)"),
        ({"services__back__max_cpu": float("inf")}, "number (finite)"),
        ({"classes__get__sla": {"percentile": 99, "ms": -1}}, "out of range"),
        ({"classes__get__weight": 0}, "out of range"),
        ({"classes__get__entry": "cache.get"}, "cannot take requests"),
        ({"classes__get__entry": "front"}, "expected 'service.endpoint'"),
        ({"classes__get__entry": "fr\nont.get"}, "expected 'service.endpoint'"),
        ({"services__front__endpoints__get__calls": [["back.work"], ["ca che.get"]]},
         "expected 'service.endpoint'"),
        ({"services__x.y": {"kind": "redis"}}, "not a valid name"),
        ({"services__back__replicas": 0}, "whole number >= 1"),
        ({"services__back__kind": "mongodb"}, "unknown kind"),
        ({"services__back__endpoints__work__work": "sleep"}, "unknown work kind"),
        ({"services__back__endpoints__work__cpu_ms": "fast"}, "expected a number"),
        ({"services__back__endpoints__work__cpu_ms": None}, "missing"),
        ({"services__back__min_cpu": 3.0}, "above max_cpu"),
        ({"services__back__cpus": 3.0}, "unknown key"),
        ({"services__cache__replicas": 2}, "runs one server"),
        ({"services__cache__client": "sync"}, "use one of async"),
        ({"services__back__client": "async"}, "only storage tiers have a client"),
        ({"classes": {}}, "no request classes"),
        ({"classes__get__wait": "pipeline"}, "no asynchronous stage"),
    ],
)
def test_bad_files_name_key_and_fix(patch, fragment):
    with pytest.raises(AppSpecError) as e:
        parse_app(tiny(**patch), source="bad.toml")
    msg = str(e.value)
    assert fragment in msg
    assert msg.startswith("bad.toml: ")
    assert " — " in msg  # every message carries a fix
    assert "\n" not in msg


def test_cycle_is_reported_with_its_path():
    d = tiny(services__back__endpoints__work__calls=[["front.get"]])
    with pytest.raises(AppSpecError, match=r"call cycle .*front\.get -> back\.work -> front\.get"):
        parse_app(d, source="cyc.toml")


def test_queue_edges_are_checked():
    d = tiny()
    d["services"]["q"] = {"kind": "redis"}
    d["services"]["stage"] = {"queue": "q", "endpoints": {"run": {"cpu_ms": 1}}}
    d["services"]["front"]["endpoints"]["get"]["enqueue"] = ["stage.run"]
    assert parse_app(d).services["stage"].queue == "q"
    sync = copy.deepcopy(d)
    sync["services"]["front"]["endpoints"]["get"]["calls"] = [["stage.run"]]
    with pytest.raises(AppSpecError, match="queue-fed"):
        parse_app(sync)
    noqueue = copy.deepcopy(d)
    noqueue["services"]["front"]["endpoints"]["get"]["enqueue"] = ["back.work"]
    with pytest.raises(AppSpecError, match="has no queue"):
        parse_app(noqueue)
    badq = copy.deepcopy(d)
    badq["services"]["stage"]["queue"] = "cache"
    with pytest.raises(AppSpecError, match="not a redis service"):
        parse_app(badq)


def test_unknown_app_and_bad_toml(tmp_path: Path):
    with pytest.raises(AppSpecError, match="unknown app 'nope'.*social-network"):
        load_app("nope")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(AppSpecError, match="not valid TOML"):
        load_app(broken)
    with pytest.raises(AppSpecError, match="no such app file"):
        load_app(tmp_path / "missing.toml")


def test_every_shipped_file_round_trips_through_the_parser():
    for name in app_names():
        data = tomllib.loads((APPS_DIR / f"{name}.toml").read_text())
        app = parse_app(data)
        assert app.name == name
        for rc in app.classes.values():
            assert rc.sla.ms > 0


def test_the_documented_example_app_is_valid():
    doc = (Path(__file__).parents[2] / "docs" / "microservices.md").read_text()
    example = doc.split("```toml\n")[1].split("```")[0]
    app = parse_app(tomllib.loads(example), source="shop.toml")
    assert app.services["mailer"].queue == "jobs"
    assert [str(c) for c in app.endpoint(Call("web", "checkout")).enqueue] == ["mailer.send"]


def test_directory_and_binary_app_files_are_one_line_errors(tmp_path: Path):
    with pytest.raises(AppSpecError, match="not a file") as e:
        load_app(tmp_path)
    assert "\n" not in str(e.value)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(AppSpecError, match="not UTF-8 text") as e:
        load_app(binary)
    assert "\n" not in str(e.value)


# --- property test: whatever a file holds, the parser loads it or answers in one line ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 5),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["front.get", "back.work", "cache.get", "logic", "redis",
                                     "pipeline", "hash", ".", "a\n.b", "front.\n"]))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))


@st.composite
def _mutated_apps(draw):
    d = copy.deepcopy(TINY)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        node = d
        for k in path[:-1]:
            node = node[k]
        if draw(st.booleans()):
            node[path[-1]] = draw(_VALUES)
        else:
            del node[path[-1]]
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_apps())
def test_mutated_app_files_load_or_fail_in_one_line(data):
    try:
        parse_app(data, source="fuzz.toml")
    except AppSpecError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.toml: ")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_as_an_app_file_load_or_fail_in_one_line(tmp_path_factory, raw):
    f = tmp_path_factory.mktemp("fuzz") / "app.toml"
    f.write_bytes(raw)
    try:
        load_app(f)
    except AppSpecError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("name", app_names())
def test_app_round_trips_through_its_plain_data_form(name):
    import dataclasses
    import json

    app = load_app(name)
    back = parse_app(json.loads(json.dumps(app.to_data())), source=app.source)
    assert back == app
    assert dataclasses.replace(back, source="x") != app  # the comparison sees fields
