"""pytest plugin (registered in tests/conftest.py): test servers that stop at teardown.

def test_x(openai_server):                       # a default echo server
    ... base_url=openai_server.url ...

def test_y(make_openai_server):                  # any OpenAIServer options
    srv = make_openai_server(faults=["429", None], latency=0.05)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from servers.openai_server import OpenAIServer

MakeServer = Callable[..., OpenAIServer]


@pytest.fixture
def make_openai_server() -> Iterator[MakeServer]:
    """Factory: make_openai_server(**OpenAIServer kwargs) -> a started server."""
    started: list[OpenAIServer] = []

    def make(*args: Any, **kwargs: Any) -> OpenAIServer:
        srv = OpenAIServer(*args, **kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def openai_server(make_openai_server: MakeServer) -> OpenAIServer:
    """A started echo server (model id `test-model`), no faults, no latency."""
    return make_openai_server()
