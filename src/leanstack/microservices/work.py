"""Real CPU work for service endpoints: each work kind of the app format does genuine computation.

An endpoint's own work is a loop of small units of one kind (JSON documents, SHA-256 rounds,
regex text processing, zlib, a numpy 2-D convolution) that runs until the thread's CPU clock has
advanced by a target drawn from the endpoint's ``cpu_ms`` and ``cv``. Using the per-thread CPU
clock (not wall time) makes the work cost the same CPU whatever the tier's quota: under a tight
quota it simply takes longer in wall time, as real code does.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import zlib
from collections.abc import Callable

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import WORK_KINDS

_rng = random.Random(7)
_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "microservice", "latency", "tail", "cpu",
          "quota", "cache", "timeline", "post", "graph", "video", "frame", "scene", "face"]
_POST = " ".join(
    _rng.choice(_WORDS) if i % 9 else f"@user{i} http://example.com/p/{i}?q={i * 7}"
    for i in range(60)
)
_TOKEN = re.compile(r"[A-Za-z0-9_]+")
_URL = re.compile(r"https?://[^\s]+")
_MENTION = re.compile(r"@([A-Za-z0-9_]+)")
_BLOB = " ".join(_rng.choice(_WORDS) for _ in range(200)).encode()
_DIGEST_SEED = bytes(range(256)) * 4
_IMAGE = np.random.default_rng(7).random((48, 48))
_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def _json_unit(i: int) -> object:
    doc = {"id": i, "user": f"user{i % 97}", "text": _POST[:120],
           "tags": _WORDS[: 3 + i % 5], "meta": {"likes": i % 13, "ts": 1700000000 + i}}
    return json.loads(json.dumps(doc))["meta"]


def _hash_unit(i: int) -> object:
    h = _DIGEST_SEED
    for _ in range(4):
        h = hashlib.sha256(h + i.to_bytes(4, "little")).digest() * 32
    return h[:8]


def _text_unit(i: int) -> object:
    tokens = _TOKEN.findall(_POST[: 200 + i % 100])
    return len(tokens), _URL.findall(_POST[:300]), _MENTION.findall(_POST[:300])


def _compress_unit(i: int) -> object:
    data = _BLOB[i % 64:][:900]
    return len(zlib.decompress(zlib.compress(data, 6)))


def _image_unit(i: int) -> object:
    img = _IMAGE
    out = np.zeros((img.shape[0] - 2, img.shape[1] - 2))
    for dy in range(3):
        for dx in range(3):
            out += _KERNEL[dy, dx] * img[dy:dy + out.shape[0], dx:dx + out.shape[1]]
    return float(out.max())


UNITS: dict[str, Callable[[int], object]] = {
    "json": _json_unit, "hash": _hash_unit, "text": _text_unit,
    "compress": _compress_unit, "image": _image_unit,
}


def draw_cpu_ms(mean_ms: float, cv: float, rng: np.random.Generator) -> float:
    """A CPU-time target with mean ``mean_ms`` and coefficient of variation ``cv`` (gamma)."""
    if mean_ms <= 0:
        return 0.0
    if cv <= 0:
        return mean_ms
    shape = 1.0 / (cv * cv)
    return float(rng.gamma(shape, mean_ms / shape))


def do_work(kind: str, cpu_ms: float) -> float:
    """Do real work of ``kind`` until this thread has used ``cpu_ms`` of CPU; return CPU ms used."""
    unit = UNITS.get(kind)
    if unit is None:
        raise LeanstackError(f"unknown work kind {kind!r} — use one of {', '.join(WORK_KINDS)}")
    start = time.thread_time_ns()
    target = start + int(cpu_ms * 1e6)
    i = 0
    while time.thread_time_ns() < target:
        unit(i)
        i += 1
    return (time.thread_time_ns() - start) / 1e6
