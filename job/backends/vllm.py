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

Where vLLM's own paths differ from a plain HF tokenizer, this follows vLLM 0.33 (the
`vllm_contract` tests check it against the real wheel): the chat template is picked as
`resolve_chat_template` does (--chat-template, else the tokenizer's; of named templates,
"default"); Mistral-format checkpoints render through vLLM's Mistral tokenizer (which takes
no template); model sampling defaults are the set `vllm serve` merges into a request;
num_tokens counts the answer's tokens without the stop token, as the hf backend does.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import sys
from pathlib import Path
from typing import Any

from job.backends.base import (
    BatchBackend,
    GenRequest,
    GenResult,
    Message,
    ProgressFn,
    SamplingParams,
    check_sampling,
)
from job.backends.template_kwargs import warn_unused
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


SERVE_DEFAULTS = (
    "repetition_penalty", "presence_penalty", "frequency_penalty", "top_p", "top_k", "min_p",
    "skip_special_tokens",
)  # fmt: skip
"""Of ModelConfig.get_diff_sampling_param's keys, those `vllm serve` takes for a request that
sets only temperature and max_tokens (FastChat's requests): the request's own temperature and
max_tokens win, as in ChatCompletionRequest.to_sampling_params."""

MISTRAL_WEIGHTS, MISTRAL_TOKENIZERS = ("consolidated*.safetensors",), ("tekken.json", "tokenizer.model.v*")


def mistral_format(model: str) -> bool:
    """A local folder vLLM's tokenizer_mode "auto" loads with its Mistral tokenizer (vLLM 0.33
    resolve_tokenizer_args: a consolidated*.safetensors and a tekken.json or tokenizer.model.v*
    file anywhere in the tree). A hub id cannot be told before vLLM downloads it."""
    path = Path(model)
    if not path.is_dir():
        return False
    names = [f.name for f in path.rglob("*")]

    def has(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(n, p) for n in names for p in patterns)

    return has(MISTRAL_WEIGHTS) and has(MISTRAL_TOKENIZERS)


def _is_mistral_tokenizer(tokenizer: Any) -> bool:
    """vllm.tokenizers.mistral.MistralTokenizer (by class name: our fake has its own)."""
    return type(tokenizer).__name__ == "MistralTokenizer"


def resolve_template(tokenizer: Any, model: str, template: str | None) -> str:
    """As vLLM's resolve_chat_template: --chat-template, else the tokenizer's own; of named
    templates (a dict after loading) "default", the one vLLM picks for a request without tools."""
    own = getattr(tokenizer, "chat_template", None)
    fix = "pass --chat-template FILE (a Jinja chat template)"
    if template is None and not own:
        raise JobError(f"model {model!r} has no chat template; {fix}")
    if template is None and isinstance(own, dict) and "default" not in own:
        raise JobError(f"model {model!r} has named chat templates ({', '.join(own)}), none 'default'; {fix}")
    resolved: str = tokenizer.get_chat_template(template)
    return resolved


def render_ids(
    tokenizer: Any, messages: list[Message], chat_template: str | None, kwargs: dict[str, Any] | None = None
) -> list[int]:
    """The prompt's token ids, as vLLM's chat path renders them: the template once, encoded
    without adding special tokens (the template writes its BOS). A Mistral tokenizer renders
    to ids itself: its control tokens are not text, so its rendered text must not be encoded.
    `kwargs` (--chat-template-kwargs) reach the template as LLM.chat's chat_template_kwargs do
    (vLLM keeps those the template or apply_chat_template reads; the rest change nothing)."""
    extra = kwargs or {}
    if _is_mistral_tokenizer(tokenizer):
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
        )
    text = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False, **extra
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def _answer_tokens(comp: Any) -> int:
    """Generated tokens without the stop token, as the hf backend counts them. vLLM's
    token_ids end with the EOS / stop token id that ended a "stop" request (stop_reason None
    or that id; its text leaves it out); a stop string (stop_reason str) ends on text tokens."""
    n = len(comp.token_ids or ())
    stopped_by_token = comp.finish_reason == "stop" and not isinstance(
        getattr(comp, "stop_reason", None), str
    )
    return n - 1 if stopped_by_token and n else n


class VLLMBackend(BatchBackend):
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
        tokenizer_mode: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        **_: Any,
    ):
        import vllm

        self.spec = spec
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
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
            if tokenizer_mode == "mistral" or (tokenizer_mode in (None, "auto") and mistral_format(name)):
                self._refuse_template(model, chat_template)
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
        if tokenizer_mode is not None:
            engine_args["tokenizer_mode"] = tokenizer_mode
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
        self.mistral = _is_mistral_tokenizer(self.tokenizer)
        try:
            if self.mistral and chat_template:  # a hub id: known only now
                self._refuse_template(model, chat_template)
            self.chat_template = None if self.mistral else resolve_template(self.tokenizer, model, template)
        except JobError:
            self.close()
            raise
        warn_unused(spec, self.chat_template, self.chat_template_kwargs)
        self.max_model_len = self._context_length()
        self.model_defaults = self._model_defaults()

    @staticmethod
    def _refuse_template(model: str, chat_template: str) -> None:
        raise JobError(
            f"--chat-template {chat_template}: vLLM loads {model!r} with its Mistral tokenizer, which "
            "renders prompts itself and takes no chat template; drop --chat-template, or pass "
            "--tokenizer-mode hf to use the folder's HF tokenizer with the template"
        )

    def _model_defaults(self) -> dict[str, Any]:
        """The model's generation_config sampling defaults (top_p, top_k, ...), as `vllm serve`
        applies them to requests that set only temperature and max_tokens (FastChat's vLLM path)."""
        try:
            diff = self.llm.llm_engine.model_config.get_diff_sampling_param()
        except (AttributeError, TypeError, ValueError):
            return {}
        defaults = {k: v for k, v in (diff or {}).items() if k in SERVE_DEFAULTS}
        # the engine would reject these at the first request: say so now, naming the file
        where = f"{self.spec} generation_config.json"
        checked = ("top_p", "top_k", "min_p", "repetition_penalty")
        check_sampling(
            temperature=0.0,
            max_new_tokens=1,
            **{k: defaults[k] for k in checked if k in defaults},
            where=where,
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = defaults.get(name)
            if value is not None and not (isinstance(value, int | float) and -2.0 <= value <= 2.0):
                raise JobError(f"{where}: {name} must be in [-2, 2], got {value!r}")
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
        return render_ids(self.tokenizer, self._messages(req), self.chat_template, self.chat_template_kwargs)

    def sampling_params(self, params: SamplingParams) -> Any:
        # the model's defaults as vllm serve merges them (greedy too: vLLM itself then drops
        # top_p/top_k/min_p, while the penalties still apply)
        kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens, **self.model_defaults}
        kwargs["temperature"] = 0.0 if params.greedy else params.temperature
        # a per-request seed gives each choice its own random stream, whatever else is drawn;
        # the logits still depend on the batch unless VLLM_BATCH_INVARIANT=1 (README)
        if not params.greedy and params.seed is not None:
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
        # an empty text that stopped or hit the limit is an (empty) answer, as in FastChat
        return GenResult((comp.text or "").strip(), finish_reason=reason, num_tokens=_answer_tokens(comp))

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
