"""vllm.tokenizers.mistral as in vLLM 0.33, for Mistral-format folders (see `mistral_mode`).

MistralTokenizer renders a chat to token ids itself: its control tokens ([INST], [/INST])
are ids, never text, so rendering to text and encoding that text gives other ids (the text
"[INST]" is plain characters). It has no `chat_template` and takes none, as the real one."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any


def mistral_mode(model: str, tokenizer_mode: str | None) -> bool:
    """vLLM 0.33 resolve_tokenizer_args: "mistral", or "auto" with a consolidated*.safetensors
    and a tekken.json / tokenizer.model.v* anywhere in the folder."""
    if tokenizer_mode not in (None, "auto"):
        return tokenizer_mode == "mistral"
    names = [p.name for p in Path(model).rglob("*")]

    def has(*patterns: str) -> bool:
        return any(fnmatch.fnmatch(n, p) for n in names for p in patterns)

    return has("consolidated*.safetensors") and has("tekken.json", "tokenizer.model.v*")


class MistralTokenizer:
    CONTROL = ("[INST]", "[/INST]")

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        self.bos_token_id = hf.bos_token_id
        self.eos_token_id = hf.eos_token_id
        # beyond the text vocabulary: no text encodes to them
        self._control = {name: len(hf) + i for i, name in enumerate(self.CONTROL)}

    def encode(
        self,
        text: str,
        truncation: bool | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[int]:
        ids: list[int] = self._hf.encode(text, add_special_tokens=False)
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: Any = None, **kwargs: Any) -> Any:
        if kwargs.pop("add_generation_prompt", False) and messages[-1]["role"] == "assistant":
            raise ValueError(
                "Cannot set `add_generation_prompt` to True when the last message is from the assistant."
            )
        ids = [self.bos_token_id]
        for m in messages:
            body = self.encode(m["content"], add_special_tokens=False)
            if m["role"] == "assistant":
                ids += [*body, self.eos_token_id]
            else:
                ids += [self._control["[INST]"], *body, self._control["[/INST]"]]
        return ids if kwargs.get("tokenize", True) else self.decode(ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        names = {v: k for k, v in self._control.items()}
        out, run = [], []
        for i in [*ids, None]:
            if i is None or i in names:
                out.append(self._hf.decode(run, skip_special_tokens=skip_special_tokens))
                run = []
                if i is not None:
                    out.append(names[i])
            else:
                run.append(i)
        return "".join(out)
