"""The hf backend on a real CUDA GPU (`pytest -m gpu`; benchmarks/gpu_check.sh runs these).

Self-contained (no conftest fixtures: gpu_check runs them with --noconftest on machines
that have torch and transformers but not the test extra). Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from job.backends.smoke_model import build

    return build(tmp_path_factory.mktemp("gpu") / "tiny", hidden=128)


def _requests(n: int) -> list:
    from job.backends.base import GenRequest, SamplingParams

    greedy = [
        GenRequest(
            [{"role": "user", "content": f"Tell me about the number {i}." * (i % 5 + 1)}],
            SamplingParams(0.0, n),
        )
        for i in range(12)
    ]
    sampled = [
        GenRequest([{"role": "user", "content": "Write a poem."}], SamplingParams(0.7, n, seed=s))
        for s in range(4)
    ]
    return greedy + sampled


def test_cuda_batched_equals_one_at_a_time(cuda_tiny: Path) -> None:
    """fp32 on the GPU: length-sorted, left-padded batches give the answers of batch size 1."""
    from job.backends.hf import HFBackend

    reqs = _requests(16)
    batched = HFBackend("hf/t", str(cuda_tiny), device="cuda", dtype="float32")
    single = HFBackend("hf/t", str(cuda_tiny), device="cuda", dtype="float32", batch_size=1)
    try:
        a, b = batched.generate(reqs), single.generate(reqs)
    finally:
        batched.close()
        single.close()
    assert all(r.ok for r in a + b)
    assert [r.text for r in a] == [r.text for r in b]


def test_cuda_bf16_forced_lengths_and_seeded_samples(cuda_tiny: Path) -> None:
    """bf16 (what gpu_check times): EOS suppressed gives exactly N tokens; a sampled answer
    depends on its seed only, not on its batch."""
    from job.backends.hf import HFBackend

    reqs = _requests(24)
    backend = HFBackend("hf/t", str(cuda_tiny), device="cuda", dtype="bfloat16", min_new_tokens=24)
    try:
        first = backend.generate(reqs)
        alone = backend.generate(reqs[-4:])
    finally:
        backend.close()
    assert str(backend.dtype) == "torch.bfloat16"
    assert all(r.ok and r.num_tokens == 24 and r.finish_reason == "length" for r in first)
    assert [r.text for r in first[-4:]] == [r.text for r in alone]
