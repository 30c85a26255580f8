"""Markdown → Telegram HTML and splitting, for any text: what is sent always parses at
Telegram, fits its limit, and loses no word."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carapace.channels.telegram_format import SPLIT_BUDGET, split_text, to_html, utf16_len
from carapace.testing.telegram_wire import parse_html

MARKUP = st.sampled_from(["*", "**", "_", "__", "~~", "`", "```", "```py", "[", "]", "(",
                          ")", "https://x.org/?a=1&b=2", "<", ">", "&", "&amp;", "<b>", "#",
                          "\n", "\n\n", " ", ". ", "😀", "é", "a", "word"])  # fmt: skip
TEXTS = st.lists(MARKUP, max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_rendered_markdown_always_parses_and_keeps_the_words(text: str) -> None:
    shown = parse_html(to_html(text))  # raises ParseError if Telegram would refuse it
    for word in ("😀", "é"):  # (an ASCII word right after ``` is a code block's language)
        assert shown.count(word) == text.count(word)


def _ink(text: str) -> str:
    """The text without whitespace and backticks (a cut may close and reopen a fence)."""
    return re.sub(r"[\s`]", "", text)


@settings(max_examples=100, deadline=None)
@given(st.lists(MARKUP.filter(lambda m: m != "```py"), min_size=1, max_size=400).map("".join),
       st.integers(40, 300))  # fmt: skip
def test_pieces_fit_and_lose_nothing(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(utf16_len(p) <= limit for p in pieces)
    assert _ink("".join(pieces)) == _ink(text)
    for p in pieces:
        parse_html(to_html(p))


def test_a_long_word_is_cut_hard_and_emoji_count_double() -> None:
    assert [utf16_len(p) for p in split_text("😀" * 100, 50)] == [42, 42, 42, 42, 32]


def test_a_split_reads_each_character_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It measured the whole rest of the text for every piece: 4 MiB took 4.5 s."""
    import carapace.channels.telegram_format as tf

    measured = [0]
    real = tf.utf16_len

    def counting(t: str) -> int:
        measured[0] += len(t)
        return real(t)

    monkeypatch.setattr(tf, "utf16_len", counting)
    text = "Words, more words and a few more. " * 30_000  # ~1 MB, ~250 pieces
    pieces = tf.split_text(text)
    assert " ".join(pieces).split() == text.split()
    assert measured[0] <= 4 * len(text), measured[0]


def test_a_fence_with_a_long_language_name_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The language of an open fence is repeated at the head of every piece: a name of
    thousands of characters left no room for the text (at small budgets the split never
    ended)."""
    text = "```" + "x" * 4000 + "\n" + "code line\n" * 2000
    pieces = split_text(text)
    assert len(pieces) <= 2 + len(text) // 2000
    assert all(utf16_len(p) <= SPLIT_BUDGET for p in pieces)
    small = split_text("```" + "y" * 300 + "\n" + "z " * 500, 100)
    assert small and all(utf16_len(p) <= 100 for p in small)


def test_brackets_are_not_scanned_to_the_end_from_each_one() -> None:
    """A piece of 4,000 ``[`` took 119 ms to render (each one scanned the rest for a ``]``):
    a link's text and address hold no bracket now. Links still render."""
    assert to_html("[" * 4000) == "[" * 4000
    assert to_html("see [the docs](https://x.org/a?b=1)") == (
        'see <a href="https://x.org/a?b=1">the docs</a>'
    )
