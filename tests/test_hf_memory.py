"""HF batches sized from memory: KV bytes per token (MHA, GQA), the budget that fits free
accelerator memory (host memory and its cgroup on CPU), an OOM-learnt size kept for the rest of the run, --device-map."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from job.backends import hf_memory
from job.backends.base import GenRequest, SamplingParams
from job.backends.hf import HFBackend
from job.backends.hf_memory import (
    CPU_TOKEN_BUDGET,
    KV_SHARE,
    RESERVE_BYTES,
    kv_bytes_per_token,
    layers_by_device,
    token_budget,
)
from job.errors import JobError

GiB = 2**30
KiB = 1024
# shapes only: no weights are built
LLAMA2_7B = LlamaConfig(
    num_hidden_layers=32, num_attention_heads=32, hidden_size=4096, intermediate_size=11008
)
LLAMA3_8B = LlamaConfig(
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    hidden_size=4096,
    intermediate_size=14336,
)


def test_kv_bytes_per_token_mha_and_gqa() -> None:
    # layers x kv heads x head dim x 2 (key, value) x 2 bytes (bf16)
    assert kv_bytes_per_token(LLAMA2_7B, 2) == 32 * 32 * 128 * 2 * 2 == 512 * KiB
    assert kv_bytes_per_token(LLAMA3_8B, 2) == 32 * 8 * 128 * 2 * 2 == 128 * KiB
    assert kv_bytes_per_token(LLAMA3_8B, 4) == 256 * KiB
    # a config without head_dim or num_key_value_heads (GPT-2 style): hidden / heads, MHA
    old = SimpleNamespace(num_hidden_layers=12, num_attention_heads=12, hidden_size=768)
    assert kv_bytes_per_token(old, 2) == 12 * 12 * 64 * 2 * 2
    # head_dim set explicitly (Gemma: 256, not hidden / heads)
    gemma = SimpleNamespace(
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, hidden_size=3072, head_dim=256
    )
    assert kv_bytes_per_token(gemma, 2) == 28 * 16 * 256 * 2 * 2


def test_budget_fits_free_memory_not_a_fixed_131072() -> None:
    free = 80 * GiB
    usable = (free - RESERVE_BYTES) * KV_SHARE
    mha = token_budget(LLAMA2_7B, 2, {"cuda": free}, {"cuda": 32})
    gqa = token_budget(LLAMA3_8B, 2, {"cuda": free}, {"cuda": 32})
    assert mha == int(usable // (512 * KiB)) == 129_433  # 79 GiB x 0.8 / 512 KiB
    assert gqa == int(usable // (128 * KiB)) == 517_734  # 4x fewer KV heads, 4x the tokens
    assert mha * 512 * KiB <= usable < (mha + 1) * 512 * KiB
    # 131,072 tokens of the MHA model would be 64 GiB of cache: on a 24 GiB card it is ~36k
    small = token_budget(LLAMA2_7B, 2, {"cuda": 24 * GiB}, {"cuda": 32})
    assert small == int((23 * GiB * KV_SHARE) // (512 * KiB)) == 37_683
    # nothing free beyond the reserve: still one row at a time, never zero
    assert token_budget(LLAMA2_7B, 2, {"cuda": GiB // 2}, {"cuda": 32}) == 1


def test_budget_over_several_gpus_is_set_by_the_tightest() -> None:
    """--device-map auto: each layer's cache lives on its GPU; the fullest GPU decides."""
    device_map = {
        "model.embed_tokens": 0,
        **{f"model.layers.{i}": 0 for i in range(20)},
        **{f"model.layers.{i}": 1 for i in range(20, 32)},
        "model.norm": 1,
        "lm_head": 1,
    }
    layers = layers_by_device(device_map, 32, "cuda:0")
    assert layers == {"cuda:0": 20, "cuda:1": 12}
    per_layer = 512 * KiB // 32
    free = {"cuda:0": 10 * GiB, "cuda:1": 60 * GiB}
    expected = int((9 * GiB * KV_SHARE) // (per_layer * 20))
    assert token_budget(LLAMA2_7B, 2, free, layers) == expected
    # offloaded layers (cpu/disk) have no GPU memory of their own to size from
    assert layers_by_device({"model.layers.0": 0, "model.layers.1": "cpu"}, 2, "cuda:0") == {
        "cuda:0": 1,
        "cpu": 1,
    }
    assert token_budget(LLAMA2_7B, 2, {"cuda:0": 2 * GiB}, {"cuda:0": 1, "cpu": 1}) == int(
        (GiB * KV_SHARE) // per_layer
    )
    # a model on one device (no layer entries in the map): all layers there
    assert layers_by_device({"": 0}, 32, "cuda:0") == {"cuda:0": 32}
    assert layers_by_device(None, 32, "cuda") == {"cuda": 32}


def _req(text: str, n: int = 6) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], SamplingParams(0.0, n, 0))


def _host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, available: int, cgroup: dict[str, str]) -> None:
    """A host with `available` bytes in /proc/meminfo and these cgroup files."""
    (tmp_path / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available // 1024} kB\n")
    for name, text in cgroup.items():
        (tmp_path / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / name).write_text(text + "\n")
    monkeypatch.setattr(hf_memory, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(hf_memory, "CGROUP", str(tmp_path / "cg"))


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ({}, 10 * GiB),  # no cgroup files: the machine's MemAvailable
        ({"memory.max": "max", "memory.current": str(GiB)}, 10 * GiB),  # v2, unlimited
        ({"memory.max": str(4 * GiB), "memory.current": str(GiB)}, 3 * GiB),  # v2: a 4 GiB container
        (
            {"memory/memory.limit_in_bytes": str(2 * GiB), "memory/memory.usage_in_bytes": str(GiB // 2)},
            GiB * 3 // 2,
        ),
        ({"memory.max": str(GiB), "memory.current": str(2 * GiB)}, 0),  # over its limit already
    ],
)
def test_host_free_memory_is_the_tighter_of_the_machine_and_its_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroup: dict[str, str], expected: int
) -> None:
    _host(tmp_path, monkeypatch, 10 * GiB, cgroup)
    assert hf_memory.host_free_bytes() == expected


def test_cpu_default_budget_comes_from_host_memory_up_to_the_cap(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = AutoConfig.from_pretrained(tiny_model)
    per_token = c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2 * 4
    # half of it (the slot cache's spare room on CPU) is 1 GiB reserve + 100 MiB: 80% of 100 MiB
    _host(tmp_path, monkeypatch, 2 * (GiB + 100 * 2**20), {})
    b = HFBackend("hf/tiny", str(tiny_model), device="cpu")
    assert b.token_budget == int(0.8 * 100 * 2**20 // per_token) < CPU_TOKEN_BUDGET
    _host(tmp_path, monkeypatch, 500 * GiB, {})  # plenty of memory: the CPU cap
    assert HFBackend("hf/tiny", str(tiny_model), device="cpu").token_budget == CPU_TOKEN_BUDGET
    assert HFBackend("hf/tiny", str(tiny_model), device="cpu", token_budget=500).token_budget == 500


def _oom_above(b: HFBackend, limit: int) -> list[tuple[str, int]]:
    """The model (not our code) runs out of memory above `limit` padded tokens, as a GPU would;
    returns the ("oom" | "ran", padded tokens) of every generate call, in order."""
    events: list[tuple[str, int]] = []
    real = b.model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        padded = int(ids.numel()) + int(ids.shape[0]) * kwargs["max_new_tokens"]
        if padded > limit:
            events.append(("oom", padded))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        events.append(("ran", padded))
        return real(*args, **kwargs)

    b.model.generate = generate  # type: ignore[method-assign]
    return events


def _ooms(events: list[tuple[str, int]]) -> list[int]:
    return [n for kind, n in events if kind == "oom"]


def test_an_oom_size_is_remembered_for_the_rest_of_the_run(tiny_model: Path) -> None:
    b = HFBackend("hf/tiny", str(tiny_model), device="cpu", token_budget=100_000)
    prompts = [f"question {i} about lighthouses and their keepers" for i in range(16)]
    expected = [r.text for r in b.generate([_req(p) for p in prompts])]
    events = _oom_above(b, 8 * 30)
    first = b.generate([_req(p) for p in prompts])
    assert [r.text for r in first] == expected and all(r.ok for r in first)
    # the first batch is cut down (halving the size each time) until one fits; from the
    # first batch that runs on, no batch fails again
    ran_from = events.index(next(e for e in events if e[0] == "ran"))
    assert all(kind == "oom" for kind, _ in events[:ran_from]) and ran_from <= 4
    assert all(kind == "ran" for kind, _ in events[ran_from:]), events
    learnt = b.token_budget
    assert learnt < 100_000 and max(n for kind, n in events if kind == "ran") <= learnt
    # later calls of the same run start at the learnt size: no OOM, no split
    n_ooms = len(_ooms(events))
    again = b.generate([_req(p) for p in prompts] + [_req(p + " again") for p in prompts])
    assert all(r.ok for r in again) and [r.text for r in again[:16]] == expected
    assert len(_ooms(events)) == n_ooms and b.token_budget == learnt


def test_an_oom_with_batch_size_set_keeps_the_halved_batch_size(tiny_model: Path) -> None:
    b = HFBackend("hf/tiny", str(tiny_model), device="cpu", batch_size=16)
    events = _oom_above(b, 4 * 30)
    prompts = [f"lighthouse {i}" for i in range(16)]
    assert all(r.ok for r in b.generate([_req(p) for p in prompts]))
    assert b.batch_size is not None and b.batch_size <= 4
    n_ooms = len(_ooms(events))
    assert 1 <= n_ooms <= 2
    assert all(r.ok for r in b.generate([_req(p) for p in prompts]))
    assert len(_ooms(events)) == n_ooms, "the second call does not retry the sizes that failed"


def test_device_map_auto_is_passed_to_from_pretrained(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    plain = HFBackend("hf/tiny", str(tiny_model), device="cpu")
    seen: list[Any] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:  # transformers' loader, recorded and run as is
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    mapped = HFBackend("hf/tiny", str(tiny_model), device_map="auto")
    assert seen == ["auto"]
    assert mapped.device == "cpu"  # no GPU here: accelerate leaves every layer on the CPU
    reqs = [_req("lighthouse keepers"), _req("umbrellas and lighthouses at night")]
    assert [r.text for r in mapped.generate(reqs)] == [r.text for r in plain.generate(reqs)]


def test_bad_device_map_is_a_one_line_error(tiny_model: Path) -> None:
    with pytest.raises(JobError, match="unknown --device-map 'everywhere'; use auto"):
        HFBackend("hf/tiny", str(tiny_model), device_map="everywhere")
    with pytest.raises(JobError, match="drop --device cpu"):
        HFBackend("hf/tiny", str(tiny_model), device="cpu", device_map="auto")


@pytest.mark.parametrize("command", ["generate", "judge"])
def test_device_map_reaches_the_hf_backend_from_the_cli(
    run_job: Any, tmp_path: Path, tiny_model: Path, command: str
) -> None:
    """`--device-map` is an option of generate and judge (and run) whose value the hf backend gets:
    with --device as well it refuses, in one line, before loading anything."""
    from test_judge_cli import smoke_answers

    out = smoke_answers(run_job, tmp_path) if command == "judge" else tmp_path / "runs"
    model = "--judge-model" if command == "judge" else "--model"
    args = [command, "--bench", "smoke", "--output", str(out), model, f"hf/{tiny_model}"]
    r = run_job(*args, "--device-map", "auto", "--device", "cpu")
    assert r.returncode != 0, r.stderr
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .endswith("--device-map auto places the model itself; drop --device cpu")
    )
    r = run_job(*args, "--device-map", "everywhere")
    assert r.returncode == 2 and "'everywhere' is not one of 'auto', 'balanced'" in r.stderr, r.stderr
