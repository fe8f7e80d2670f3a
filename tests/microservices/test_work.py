"""Real work kinds: each spends the CPU it is asked for, and targets follow mean and cv."""

import hashlib
import re
import time

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import WORK_KINDS
from leanstack.microservices.work import UNITS, do_work, draw_cpu_ms


@pytest.mark.parametrize("kind", WORK_KINDS)
def test_work_spends_the_target_cpu(kind):
    start = time.thread_time()
    used_ms = do_work(kind, 5.0)
    measured_ms = (time.thread_time() - start) * 1e3
    assert 5.0 <= used_ms < 7.0  # at most one unit of overshoot
    assert measured_ms == pytest.approx(used_ms, abs=0.5)


def test_work_units_compute_what_they_claim():
    from scipy.signal import convolve2d

    from leanstack.microservices import work

    # json: a document serialised and parsed back, its nested object intact
    assert UNITS["json"](5) == {"likes": 5, "ts": 1700000005}
    # hash: four chained SHA-256 rounds over the seed
    h = work._DIGEST_SEED
    for _ in range(4):
        h = hashlib.sha256(h + (3).to_bytes(4, "little")).digest() * 32
    assert UNITS["hash"](3) == h[:8] and UNITS["hash"](3) != UNITS["hash"](4)
    # text: tokens, URLs and mentions found in the post
    n, urls, mentions = UNITS["text"](0)
    assert n == len(re.findall(r"\w+", work._POST[:200]))
    assert urls and all(u.startswith("http://example.com/p/") for u in urls)
    assert mentions and all(m.startswith("user") for m in mentions)
    # compress: a zlib round trip gives the input's length back
    assert UNITS["compress"](10) == len(work._BLOB[10:][:900]) == 900
    # image: a 3x3 blur of the image, its maximum
    blur = convolve2d(work._IMAGE, work._KERNEL[::-1, ::-1], mode="valid")
    assert UNITS["image"](0) == pytest.approx(blur.max())
    assert set(UNITS) == set(WORK_KINDS)


def test_zero_target_does_no_work():
    assert do_work("json", 0.0) < 0.2


def test_unknown_work_kind_is_a_one_line_error():
    with pytest.raises(LeanstackError, match="unknown work kind 'gpu' — use one of json") as e:
        do_work("gpu", 1.0)
    assert "\n" not in str(e.value)


def test_draws_follow_mean_and_cv():
    rng = np.random.default_rng(3)
    x = np.array([draw_cpu_ms(2.0, 0.5, rng) for _ in range(20000)])
    assert x.mean() == pytest.approx(2.0, rel=0.03)
    assert x.std() / x.mean() == pytest.approx(0.5, rel=0.05)
    assert x.min() >= 0


def test_deterministic_and_degenerate_draws():
    rng = np.random.default_rng(0)
    assert draw_cpu_ms(1.5, 0.0, rng) == 1.5
    assert draw_cpu_ms(0.0, 0.5, rng) == 0.0
