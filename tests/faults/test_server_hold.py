"""The test server's `hold_after` (tests/servers/openai_server.py): what makes the signal tests
deterministic. It answers the first N chat requests, holds every later one until release(),
so a run under test cannot finish (or store more) before the test has sent its signal."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

from faults.jobproc import answered, wait_until

BODY = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def _post_in_background(url: str, n: int) -> tuple[list[threading.Thread], list[int]]:
    codes: list[int] = []

    def post() -> None:
        req = urllib.request.Request(
            f"{url}/chat/completions", json.dumps(BODY).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            codes.append(resp.status)

    threads = [threading.Thread(target=post, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, codes


@pytest.mark.timeout(60)
def test_hold_after_answers_n_then_holds_until_release(make_openai_server: Any) -> None:
    srv: OpenAIServer = make_openai_server(hold_after=2)
    threads, codes = _post_in_background(srv.url, 5)
    assert wait_until(lambda: answered(srv) == 2 and srv.held == 3, 20)
    assert len(codes) == 2  # the 3 others still wait
    srv.release()
    for t in threads:
        t.join(timeout=20)
    assert codes == [200] * 5 and answered(srv) == 5 and srv.held == 0
    # re-armed: counted from the first request, so the next one is held again
    srv.hold(after=5)
    threads, codes = _post_in_background(srv.url, 1)
    assert wait_until(lambda: srv.held == 1, 20) and codes == []
    srv.release()
    threads[0].join(timeout=20)
    assert codes == [200]


@pytest.mark.timeout(60)
def test_stop_ends_held_requests() -> None:
    srv = OpenAIServer(hold_after=0).start()
    threads, codes = _post_in_background(srv.url, 1)
    assert wait_until(lambda: srv.held == 1, 20)
    srv.stop()  # must not wait for a release that never comes
    threads[0].join(timeout=20)
    assert not threads[0].is_alive()
