"""The judge and the generator have separate endpoints and keys: two real OpenAI-compatible
servers on 127.0.0.1, the real CLI; each server sees only its own requests and key, and an
ambiguous setup (OPENAI_BASE_URL for generation, no judge URL) is a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

from job.backends.endpoints import Generator, judge_endpoint, launcher_generator
from job.errors import JobError

pytestmark = pytest.mark.timeout(200)

GEN_KEY = "sk-gen-Secret0123456789abcdef"
JUDGE_KEY = "sk-judge-Secret9876543210fedcba"
NO_EGRESS = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
"""A request that would leave 127.0.0.1 (e.g. to api.openai.com) hits a dead local port."""
COMMON = ["--bench", "smoke", "--first-n", "2", "--max-retries", "0"]


def _judge_reply(body: dict[str, Any]) -> str:
    return "Fine. Rating: [[7]]"


@pytest.fixture
def servers(make_openai_server: Any) -> tuple[OpenAIServer, OpenAIServer]:
    gen = make_openai_server(api_key=GEN_KEY, models=["gen-model"])
    judge = make_openai_server(reply=_judge_reply, api_key=JUDGE_KEY, models=["judge-model"])
    return gen, judge


def _keys(srv: OpenAIServer) -> set[str]:
    return {r.headers.get("authorization", "") for r in srv.chat_requests}


def _models(srv: OpenAIServer) -> set[str]:
    return {r.body.get("model") for r in srv.chat_requests}


def _no_key_anywhere(root: Path, *texts: str) -> None:
    blobs = [*texts, *(p.read_text("utf-8", "replace") for p in root.rglob("*") if p.is_file())]
    for key in (GEN_KEY, JUDGE_KEY):
        assert not [b for b in blobs if key in b or key[8:] in b], "a key was logged or written"


def _one_line_error(p: Any, *names: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert all(n in line for n in names), line
    return line


def test_run_generates_on_one_server_and_judges_on_the_other(
    servers: Any, run_job: Any, tmp_path: Path
) -> None:
    gen, judge = servers
    env = {**NO_EGRESS, "OPENAI_BASE_URL": gen.url, "OPENAI_API_KEY": GEN_KEY, "JOB_JUDGE_API_KEY": JUDGE_KEY}
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--judge-model", "openai/judge-model",
                "--judge-base-url", judge.url, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert gen.chat_requests and judge.chat_requests
    assert (_models(gen), _keys(gen)) == ({"gen-model"}, {f"Bearer {GEN_KEY}"})
    assert (_models(judge), _keys(judge)) == ({"judge-model"}, {f"Bearer {JUDGE_KEY}"})
    assert all("[[" not in r.last_user for r in gen.chat_requests)  # no judge prompt went to the generator
    _no_key_anywhere(tmp_path / "runs", p.stdout, p.stderr)


def test_judge_url_from_env_and_key_from_a_named_variable(servers: Any, run_job: Any, tmp_path: Path) -> None:
    gen, judge = servers
    env = {**NO_EGRESS, "OPENAI_API_KEY": GEN_KEY, "JOB_JUDGE_BASE_URL": judge.url, "MY_JUDGE_KEY": JUDGE_KEY}
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--base-url", gen.url,
                "--judge-model", "openai/judge-model", "--judge-api-key-env", "MY_JUDGE_KEY", env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert (_keys(gen), _keys(judge)) == ({f"Bearer {GEN_KEY}"}, {f"Bearer {JUDGE_KEY}"})


def test_a_judge_without_a_key_of_its_own_never_gets_the_generators(
    servers: Any, make_openai_server: Any, run_job: Any
) -> None:
    gen, _ = servers
    local_judge = make_openai_server(reply=_judge_reply, models=["judge-model"])  # needs no key
    env = {**NO_EGRESS, "OPENAI_BASE_URL": gen.url, "OPENAI_API_KEY": GEN_KEY}
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--judge-model", "openai/judge-model",
                "--judge-base-url", local_judge.url, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert local_judge.chat_requests and GEN_KEY not in " ".join(_keys(local_judge))


def test_generation_endpoint_from_openai_base_url_and_no_judge_url_is_an_error(
    servers: Any, run_job: Any
) -> None:
    """The issue's case: `vllm serve` in OPENAI_BASE_URL for generation, an openai/ judge with
    no URL of its own. Before: the judge's requests went to the generation server."""
    gen, judge = servers
    env = {**NO_EGRESS, "OPENAI_BASE_URL": gen.url, "OPENAI_API_KEY": GEN_KEY, "JOB_JUDGE_API_KEY": JUDGE_KEY}
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--judge-model", "openai/judge-model", env=env)
    line = _one_line_error(p, "OPENAI_BASE_URL", "--judge-base-url", "JOB_JUDGE_BASE_URL")
    assert gen.url not in line  # a URL may carry credentials
    assert not gen.chat_requests and not judge.chat_requests  # stopped before any work
    dry = run_job("run", *COMMON, "--model", "openai/gen-model", "--judge-model", "openai/judge-model",
                  "--dry-run", env=env)  # fmt: skip
    _one_line_error(dry, "--judge-base-url")


def test_default_openai_judge_needs_its_own_key(servers: Any, run_job: Any) -> None:
    """Generating on a local server with OPENAI_API_KEY: that key is the generator's, so a
    judge at api.openai.com must be given one (nothing leaves 127.0.0.1 here)."""
    gen, _ = servers
    env = {**NO_EGRESS, "OPENAI_API_KEY": GEN_KEY}
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--base-url", gen.url,
                "--judge-model", "openai/gpt-4o", env=env)  # fmt: skip
    _one_line_error(p, "JOB_JUDGE_API_KEY", "--judge-api-key-env")
    assert not gen.chat_requests
    p = run_job("run", *COMMON, "--model", "openai/gen-model", "--base-url", gen.url,
                "--judge-model", "openai/gpt-4o", "--judge-api-key-env", "UNSET_KEY_VAR", env=env)  # fmt: skip
    _one_line_error(p, "UNSET_KEY_VAR")


def test_job_judge_uses_the_judge_endpoint_and_key(servers: Any, run_job: Any, tmp_path: Path) -> None:
    gen, judge = servers
    env = {**NO_EGRESS, "OPENAI_API_KEY": GEN_KEY}
    out = ["--output", str(tmp_path / "runs")]
    g = run_job("generate", *COMMON, "--model", "openai/gen-model", "--base-url", gen.url, *out, env=env)
    r = run_job("reduce", "--bench", "smoke", *out, env=env)
    assert g.returncode == 0 and r.returncode == 0, g.stderr[-2000:] + r.stderr[-2000:]
    n_gen = len(gen.chat_requests)
    env |= {"OPENAI_BASE_URL": gen.url, "JOB_JUDGE_API_KEY": JUDGE_KEY}
    j = run_job(
        "judge", *COMMON, "--judge-model", "openai/judge-model", "--judge-base-url", judge.url, *out, env=env
    )
    assert j.returncode == 0, j.stderr[-3000:]
    assert len(gen.chat_requests) == n_gen and (_models(judge), _keys(judge)) == (
        {"judge-model"}, {f"Bearer {JUDGE_KEY}"},
    )  # fmt: skip
    _no_key_anywhere(tmp_path / "runs", g.stderr, j.stdout, j.stderr)


def test_job_judge_beside_an_api_generator_does_not_take_its_url(
    servers: Any, make_openai_server: Any, run_job: Any, tmp_path: Path
) -> None:
    """The launchers (k8s ConfigMap, Slurm env) give `job judge` the generation step's
    environment: with JOB_MODEL=openai/... OPENAI_BASE_URL is the generator's, not the judge's."""
    gen, judge = servers
    out = ["--output", str(tmp_path / "runs")]
    env = {
        **NO_EGRESS,
        "OPENAI_API_KEY": GEN_KEY,
        "OPENAI_BASE_URL": gen.url,
        "JOB_MODEL": "openai/gen-model",
    }
    assert run_job("generate", *COMMON, *out, env=env).returncode == 0
    assert run_job("reduce", "--bench", "smoke", *out, env=env).returncode == 0
    n_gen = len(gen.chat_requests)
    j = run_job("judge", *COMMON, "--judge-model", "openai/judge-model", *out, env=env)
    _one_line_error(j, "OPENAI_BASE_URL", "--judge-base-url")
    assert len(gen.chat_requests) == n_gen
    # an explicit --base-url on `job judge` is the judge's own; the generator's key stays its own
    keyless = make_openai_server(reply=_judge_reply, models=["judge-model"])
    j = run_job("judge", *COMMON, "--judge-model", "openai/judge-model", "--base-url", keyless.url,
                "--judge-name", "keyless", *out, env=env)  # fmt: skip
    assert j.returncode == 0, j.stderr[-2000:]
    assert keyless.chat_requests and GEN_KEY not in " ".join(_keys(keyless))
    env["JOB_JUDGE_API_KEY"] = JUDGE_KEY
    j = run_job(
        "judge", *COMMON, "--judge-model", "openai/judge-model", "--base-url", judge.url, *out, env=env
    )
    assert j.returncode == 0, j.stderr[-2000:]
    assert len(gen.chat_requests) == n_gen and _keys(judge) == {f"Bearer {JUDGE_KEY}"}


X, Y = "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"


@pytest.mark.parametrize(
    ("url", "key_env", "generator", "env", "expected"),
    [
        (None, None, None, {"OPENAI_BASE_URL": X}, (X, "OPENAI_API_KEY")),  # job judge: the only endpoint
        (Y, None, None, {"JOB_JUDGE_API_KEY": "k"}, (Y, "JOB_JUDGE_API_KEY")),
        (None, None, Generator(None), {}, (None, "OPENAI_API_KEY")),  # both api.openai.com: one server
        (
            "https://api.openai.com/v1/",
            None,
            Generator(None),
            {},
            ("https://api.openai.com/v1/", "OPENAI_API_KEY"),
        ),
        (X, None, Generator(X + "/"), {}, (X, "OPENAI_API_KEY")),  # the generator's own server
        (Y, None, Generator(X), {}, (Y, None)),  # a local judge gets no key of the generator's
        (Y, "MINE", Generator(X), {"MINE": "k"}, (Y, "MINE")),
    ],
)
def test_judge_endpoint_rules(
    url: str | None, key_env: str | None, generator: Generator | None, env: dict[str, str], expected: Any
) -> None:
    got = judge_endpoint("openai/j", url, key_env, generator, env)
    assert (got["base_url"], got["api_key_env"], got["base_url_env"]) == (*expected, None)


@pytest.mark.parametrize(
    ("url", "key_env", "generator", "env", "message"),
    [
        (None, None, Generator(X), {"OPENAI_BASE_URL": X}, "--judge-base-url"),
        (None, None, Generator(None), {"OPENAI_BASE_URL": X}, "--judge-base-url"),
        (None, None, Generator(X), {}, "JOB_JUDGE_API_KEY"),
        ("https://api.openai.com/v1", None, Generator(X), {}, "JOB_JUDGE_API_KEY"),
        (Y, "MINE", None, {}, "MINE"),
    ],
)
def test_judge_endpoint_refuses_to_guess(
    url: str | None, key_env: str | None, generator: Generator | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(JobError, match=message):
        judge_endpoint("openai/j", url, key_env, generator, env)


def test_only_openai_judges_and_generators_have_endpoints() -> None:
    assert judge_endpoint("mock/judge", X, "UNSET", Generator(X), {"OPENAI_BASE_URL": X}) == {}
    assert launcher_generator({"JOB_MODEL": "vllm/ckpt", "OPENAI_BASE_URL": X}) is None
    assert launcher_generator({"JOB_MODEL": "not a spec"}) is None and launcher_generator({}) is None
    assert launcher_generator({"JOB_MODEL": "openai/m", "OPENAI_BASE_URL": X}) == Generator(X)
