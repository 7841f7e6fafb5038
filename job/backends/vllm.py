"""vLLM backend: the offline `vllm.LLM` engine in-process, one engine call per turn wave.

Each request is rendered with the model's chat template (or --chat-template) by the
engine's own tokenizer and handed to `LLM.generate` as token ids, all of the wave's
requests in ONE call with one `SamplingParams` per request (temperature, max_tokens,
per-choice seed). The engine schedules them with continuous batching, so there is
no batching logic here. Prompts longer than the model's context are recorded as
failed results before the call instead of aborting the whole wave.

Failures: one request's (template, context, finish_reason "error", no text) is a failed
GenResult; an engine that can take no more calls (EngineDeadError, or a failed call after
which a one-token probe fails too) raises BackendDead, so the process exits and nothing of
the wave is committed.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any

from job.backends.base import GenRequest, GenResult, Message, ProgressFn, SamplingParams, check_sampling
from job.errors import BackendDead, JobError

log = logging.getLogger(__name__)


def _is_engine_dead(e: BaseException) -> bool:
    """vLLM v1's EngineDeadError (by class name too: its module moved between versions)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:
        return type(e).__name__ == "EngineDeadError"
    return isinstance(e, EngineDeadError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class VLLMBackend:
    def __init__(
        self,
        spec: str,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        revision: str | None = None,
        min_new_tokens: int | None = None,
        **_: Any,
    ):
        import vllm

        self.spec = spec
        self.system_prompt = system_prompt
        self.min_new_tokens = min_new_tokens
        """Benchmarks only: force at least this many tokens (masks EOS)."""
        self._vllm = vllm
        path = Path(model).expanduser()
        name = str(path) if path.exists() else model
        if model.startswith((".", "/", "~")) and not path.exists():
            raise JobError(f"model path {model!r} does not exist; check --model vllm/<path-or-id>")
        template = None
        if chat_template:
            try:
                template = Path(chat_template).read_text("utf-8")
            except OSError as e:
                raise JobError(f"--chat-template {chat_template}: {e.strerror}") from None
        engine_args: dict[str, Any] = {
            "model": name,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "trust_remote_code": trust_remote_code,
        }
        if max_model_len is not None:
            engine_args["max_model_len"] = max_model_len
        if revision is not None:
            engine_args["revision"] = revision
        log.info(
            "starting vLLM engine for %s (tp=%d, dtype=%s, max_model_len=%s)",
            name,
            tensor_parallel_size,
            dtype,
            max_model_len or "model default",
        )
        try:
            self.llm = vllm.LLM(**engine_args)
        except (OSError, ValueError, RuntimeError) as e:  # missing files, bad args, no GPU / out of memory
            raise JobError(f"cannot start vLLM for model {model!r}: {_first_line(e)}") from None
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = template or getattr(self.tokenizer, "chat_template", None)
        if not self.chat_template:
            self.close()
            raise JobError(
                f"model {model!r} has no chat template; pass --chat-template FILE (a Jinja chat template)"
            )
        self.max_model_len = self._context_length()
        self.model_defaults = self._model_defaults()

    def _model_defaults(self) -> dict[str, Any]:
        """The model's generation_config sampling defaults (top_p, top_k, ...), as `vllm serve`
        applies them to requests that set only temperature and max_tokens (FastChat's vLLM path)."""
        try:
            diff = self.llm.llm_engine.model_config.get_diff_sampling_param()
        except (AttributeError, TypeError, ValueError):
            return {}
        keep = ("top_p", "top_k", "min_p", "repetition_penalty")
        defaults = {k: v for k, v in (diff or {}).items() if k in keep}
        # the engine would reject these at the first request: say so now, naming the file
        check_sampling(
            temperature=0.0, max_new_tokens=1, **defaults, where=f"{self.spec} generation_config.json"
        )
        return defaults

    def _context_length(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    def _messages(self, req: GenRequest) -> list[Message]:
        if self.system_prompt and not any(m["role"] == "system" for m in req.messages):
            return [{"role": "system", "content": self.system_prompt}, *req.messages]
        return req.messages

    def encode(self, req: GenRequest) -> list[int]:
        """Chat template -> token ids; the template adds BOS, so the tokenizer must not."""
        text = self.tokenizer.apply_chat_template(
            self._messages(req),
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def sampling_params(self, params: SamplingParams) -> Any:
        kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens}
        if params.greedy:
            kwargs["temperature"] = 0.0
            if "repetition_penalty" in self.model_defaults:
                kwargs["repetition_penalty"] = self.model_defaults["repetition_penalty"]
        else:
            kwargs.update(self.model_defaults)
            kwargs["temperature"] = params.temperature
            # a per-request seed gives each choice its own random stream, whatever else is drawn;
            # the logits still depend on the batch unless VLLM_BATCH_INVARIANT=1 (README)
            if params.seed is not None:
                kwargs["seed"] = params.seed
        if self.min_new_tokens:
            kwargs["min_tokens"] = min(self.min_new_tokens, params.max_new_tokens)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        prompts: list[dict[str, list[int]]] = []
        sampling: list[Any] = []
        slots: list[int] = []
        for i, req in enumerate(requests):
            try:
                ids = self.encode(req)
            except Exception as e:  # a template that rejects this conversation fails one request
                results[i] = GenResult.failure(f"chat template: {_first_line(e)}")
                continue
            if self.max_model_len is not None and len(ids) >= self.max_model_len:
                results[i] = GenResult.failure(
                    f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len} "
                    "(raise --max-model-len if the model allows it)"
                )
                continue
            prompts.append({"prompt_token_ids": ids})
            sampling.append(self.sampling_params(req.params))
            slots.append(i)
        if prompts:
            try:
                outputs = self.llm.generate(prompts, sampling, use_tqdm=sys.stderr.isatty())
            except Exception as e:  # engine failure: every request of the wave is recorded as failed
                self._raise_if_dead(e, len(prompts))
                log.error("vLLM engine call failed for %d requests: %s", len(prompts), _first_line(e))
                outputs = [None] * len(prompts)
                for i in slots:
                    results[i] = GenResult.failure(f"{type(e).__name__}: {_first_line(e)}")
            for i, out in zip(slots, outputs, strict=True):
                if out is not None:
                    results[i] = self._result(out)
        if progress:
            progress(len(requests), sum(r.num_tokens for r in results if r is not None))
        return [r if r is not None else GenResult.failure("no output") for r in results]

    def _raise_if_dead(self, e: Exception, n: int) -> None:
        """EngineDeadError, or any error after which the engine fails a one-token probe too:
        every later request would fail as well, so stop the process instead of recording
        them all as failed answers (the launcher retries the shard on a fresh engine)."""
        dead = _is_engine_dead(e)
        if not dead:
            try:
                probe = self._vllm.SamplingParams(max_tokens=1, temperature=0.0)
                self.llm.generate([{"prompt_token_ids": [self._probe_token()]}], [probe], use_tqdm=False)
            except Exception as probe_error:
                log.error("vLLM engine probe failed after an engine error: %s", _first_line(probe_error))
                dead = True
        if dead:
            raise BackendDead(
                f"vLLM engine for {self.spec} died during an engine call ({n} requests; "
                f"{type(e).__name__}: {_first_line(e)}); nothing of it was committed: "
                "run it again (a Kubernetes or Ray retry does) to redo it on a fresh engine"
            ) from None

    def _probe_token(self) -> int:
        for tid in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id):
            if isinstance(tid, int):
                return tid
        return 0

    @staticmethod
    def _result(out: Any) -> GenResult:
        if not out.outputs:
            return GenResult.failure("vLLM returned no completion")
        comp = out.outputs[0]
        reason = comp.finish_reason
        if reason in ("abort", "error"):
            return GenResult.failure(
                f"the vLLM engine ended the request with finish_reason {reason!r}", finish_reason=reason
            )
        # GenResult makes an empty completion a failure
        return GenResult(
            (comp.text or "").strip(), finish_reason=reason, num_tokens=len(comp.token_ids or ())
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        del self.llm
        del llm
        gc.collect()
        try:  # frees the GPU for a second engine in the same process (e.g. a vLLM judge)
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # best effort; absent in some versions
            pass
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
