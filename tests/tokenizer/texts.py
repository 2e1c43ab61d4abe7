"""Samples for tokenizer tests: texts (spaces, newlines, code, accents, CJK, emoji, special tokens) and chats."""

import random

SAMPLES = [
    "Hello, world!",
    "hello world 12345 and 3.14159, 1,000,000 on 2024-01-01",
    " one leading space",
    "   three leading spaces",
    "multiple    spaces   inside",
    "trailing spaces   ",
    "line1\nline2\n\n\nline3\r\nline4\n",
    "\ttabs\tand\n\tindented\n  \n",
    "def square(x):\n    return x ** 2  # the square\n\n\nprint(square(3))\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "it's, don't, I'm, we'll, they've, she'd, THEY'RE",
    "Café déjà vu, naïve façade, Ångström, Ünïcödé, São Paulo",
    "你好，世界！日本語のテキストです。한국어 텍스트",
    "I ❤️ 🦀 and 👨‍👩‍👧‍👦 🇫🇷 😀😀",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "not special: <|im_start |> <im_end>",
    "https://example.com/path?q=1&x=2#frag",
    "MiXeD CaSe WoRdS",
    "Ελληνικά και русский текст",
    "",
    " ",
    "\n",
    "a",
]


def random_texts(n: int = 20, seed: int = 0) -> list[str]:
    """Strings drawn from a mixed alphabet (ASCII, accents, CJK, emoji, whitespace)."""
    alphabet = list("abcdefghij ABC 0123456789 .,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + list(
        "éèàüößñçØœ中文字日本語한글😀🦀👍🏽❤️\n\t\r  ") + ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about café ☕ and 世界."},
    ],
    "multi_system": [
        SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "  spaces \n and newlines\n"},
    ],
}
