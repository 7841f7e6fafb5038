"""Share of Japanese characters in answers (the diagnostic Swallow reports next to the score).

After stripping Markdown syntax, count hiragana, katakana, CJK ideographs, full-width forms
and Japanese punctuation over all non-whitespace characters; micro-averaged (total Japanese
characters / total characters) over turns, choices and questions. Not a penalty: it makes a
model that answers in English visible at a glance.
"""

from __future__ import annotations

import re

_JA_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」…)
    (0x3040, 0x309F),  # hiragana
    (0x30A0, 0x30FF),  # katakana
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half-width and full-width forms (ＡＢＣ, ！, ｶﾀｶﾅ)
)

_MD_PATTERNS = [
    (re.compile(r"```[^\n]*\n?"), ""),  # code fence lines (the code itself is kept)
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links and images -> their text
    (re.compile(r"^\s{0,3}(#{1,6}|>+|[-*+]|\d+[.)])\s+", re.M), ""),  # headings, quotes, list marks
    (re.compile(r"^\s*([-*_]\s*){3,}$", re.M), ""),  # horizontal rules
    (re.compile(r"(\*{1,3}|_{2,3}|`+|~~)"), ""),  # emphasis, inline code, strike-through
    (re.compile(r"\|"), " "),  # table pipes
    (re.compile(r"^\s*:?-{3,}:?(\s+:?-{3,}:?)*\s*$", re.M), ""),  # table rule rows
]


def strip_markdown(text: str) -> str:
    for pat, repl in _MD_PATTERNS:
        text = pat.sub(repl, text)
    return text


def is_japanese_char(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _JA_RANGES)


def count_chars(text: str) -> tuple[int, int]:
    """(Japanese characters, all non-whitespace characters) of the Markdown-stripped text."""
    plain = [c for c in strip_markdown(text) if not c.isspace()]
    return sum(1 for c in plain if is_japanese_char(c)), len(plain)


def share(pairs: list[tuple[int, int]]) -> float | None:
    ja = sum(p[0] for p in pairs)
    total = sum(p[1] for p in pairs)
    return ja / total if total else None
