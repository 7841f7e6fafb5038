"""A tiny random Llama-style chat model, built offline in seconds; and a saveable HF
checkpoint rebuilt from a GGUF file (a real instruct model for tests and benchmarks).

Used by `job smoke-model DIR`, the `hf-tiny` model spec and the tests, so the
real transformers loading and generation code runs with no download. The tiny
model's output is gibberish by design; it checks plumbing, not quality.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]

# Our own text, English and Japanese, so byte-level BPE learns merges for both.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog while the lighthouse keeper counts umbrellas.",
    "Please write a short answer, explain your reasoning step by step, and give the final result.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)",
    "Seventeen times twenty-three is three hundred ninety-one; the digits add up to thirteen.",
    "Libraries, museums and schools changed how people in cities learned about history and science.",
    "今日は雨が降っています。散歩に行く前に傘を持っていきましょう。",
    "日本語で答えてください。理由を簡潔に説明し、最後に結論を書いてください。",
    "東京から大阪まで新幹線で約二時間半かかります。駅弁を食べるのが楽しみです。",
    "プログラムを書いて、結果を確認しましょう。数学の問題も一緒に解きます。",
]


def default_cache_dir() -> Path:
    base = (
        os.environ.get("JOB_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtbench-job"
    )
    return Path(base) / "smoke-model"


def build(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 2048,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build the model into out_dir (deterministic for a given seed and corpus) and return the path.

    corpus: extra texts the BPE also learns from. The built-in text alone gives a very
    inefficient tokenizer (~0.67 tokens/char on mt_bench English, real ones ~0.25), so
    benchmarks pass the questions they run to get realistic prompt lengths.
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    fast = build_tokenizer(out, vocab_size=vocab_size, corpus=corpus)
    # model: random weights, initializer_range 0.2 so greedy output varies with the prompt
    torch.manual_seed(seed)
    config = chat_config(
        fast,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = generation_config(config)
    model.save_pretrained(out)
    log.info("built tiny chat model in %s (%d parameters)", out, sum(p.numel() for p in model.parameters()))
    return out


def build_tokenizer(out: Path, *, vocab_size: int = 2048, corpus: Iterable[str] | None = None) -> Any:
    """A byte-level BPE trained in-process on the built-in text (+ corpus), with the ChatML
    template, saved into out; returns the PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(corpus or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    # transformers 4.x reads the class name from tokenizer_config.json
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), "utf-8")
    return fast


def chat_config(tokenizer: Any, **shape: Any) -> Any:
    """A LlamaConfig of the given shape whose vocabulary and bos/eos/pad ids are tokenizer's."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


def generation_config(config: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )


def from_gguf(gguf_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Rebuild a GGUF checkpoint as a plain HF one in out_dir (float32 weights, tokenizer,
    chat template, generation config) and return the path.

    transformers dequantizes GGUF on load but cannot save_pretrained the result (its config
    keeps the gguf quantization entry), so the model is rebuilt from a config without it
    and the loaded weights are copied in.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from job.errors import JobError

    src = Path(gguf_file).expanduser()
    if not src.is_file():
        raise JobError(f"GGUF file {str(src)!r} does not exist; pass the path of a .gguf checkpoint")
    out = Path(out_dir)
    kw = {"gguf_file": src.name}
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
    except ImportError:
        raise JobError("reading GGUF files needs the gguf package; run: pip install gguf") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobError(f"cannot load GGUF file {str(src)!r}: {first}") from None
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    log.info("rebuilt %s as an HF checkpoint in %s", src.name, out)
    return out


def _cached(path: Path, make: Callable[[Path], Path]) -> Path:
    """path, made by make(tmp) into a sibling temp dir and moved in place on first use."""
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        make(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, path)
        except OSError:
            # another process won the race; keep theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_from_gguf(gguf_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """out_dir holding gguf_file rebuilt (from_gguf), converted only on first use."""
    return _cached(Path(out_dir), lambda tmp: from_gguf(gguf_file, tmp))


def ensure_built(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached smoke model, built on first use."""
    return _cached(Path(out_dir) if out_dir else default_cache_dir(), build)
