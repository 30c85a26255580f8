"""Markdown → Slack mrkdwn, splitting and Block Kit (pure functions)."""

from __future__ import annotations

import pytest

from carapace.channels.slack_format import question_blocks, split, to_mrkdwn


def test_markdown_to_mrkdwn() -> None:
    cases = {
        "**bold** and __also__": "*bold* and *also*",
        "*it* and _it_": "_it_ and _it_",
        "~~gone~~": "~gone~",
        "# Title\n- one\n* two": "*Title*\n• one\n• two",
        "> quoted <b>": ">quoted &lt;b&gt;",
        "`a<b>&c` and ```\nx < y\n```": "`a&lt;b&gt;&amp;c` and ```x &lt; y```",
        "[docs](https://x.test/a?b=1&c=2)": "<https://x.test/a?b=1&amp;c=2|docs>",
        "[x](javascript:alert(1)) <!here>": "[x](javascript:alert(1)) &lt;!here&gt;",
        "2 * 3 * 4 and snake_case_name": "2 * 3 * 4 and snake_case_name",
        "**[bold link](https://x.test)**": "*<https://x.test|bold link>*",
    }
    for md, want in cases.items():
        assert to_mrkdwn(md) == want, md


def test_split_never_cuts_an_entity_or_a_link() -> None:
    text = ("&amp;" * 30) + " " + "<https://x.test|" + "y" * 50 + ">"
    for limit in range(7, 90, 3):
        parts = split(text, limit) if limit > 70 else split("&amp;" * 30, limit)
        for p in parts:
            assert not p.endswith("&") and not p.endswith("&am") and not p.startswith("p;")
    assert split("a\n\nb", 3) == ["a", "b"]
    assert split("", 10) == [""]


def test_question_blocks_limits() -> None:
    opts = [{"label": "x" * 200}]
    blocks = question_blocks({"questionId": "q", "title": "T", "question": "Q", "options": opts})
    assert blocks is not None
    [button] = blocks[1]["elements"]
    assert len(button["text"]["text"]) == 75 and button["value"] == "0"
    assert question_blocks({"questionId": "q", "options": ["a"] * 26}) is None
    assert question_blocks({"questionId": "q" * 260, "options": ["a"]}) is None


def test_a_long_reply_is_formatted_and_split_in_linear_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``replace`` of the whole text per held span and a copy of the whole rest per
    piece: 4 MiB took minutes. Now each piece looks at ``limit`` characters at most."""
    import carapace.channels.slack_format as sf

    looked = [0]
    real = sf._safe_cut

    def counting(t: str, at: int) -> bool:
        looked[0] += len(t)
        return real(t, at)

    monkeypatch.setattr(sf, "_safe_cut", counting)
    text = "See **[the docs](https://x.org)** and `a<b` & *more*, then words.\n" * 15_000
    out = sf.to_mrkdwn(text)
    assert out.count("*<https://x.org|the docs>*") == 15_000
    assert out.count("`a&lt;b`") == 15_000 and "\x00" not in out
    pieces = sf.split(out)
    assert "\n".join(pieces).split() == out.split()
    assert all(len(p) <= sf.TEXT_LIMIT for p in pieces)
    assert looked[0] <= 2 * len(out), looked[0]


@pytest.mark.parametrize("unit", ["**a ", "[", "__a ", "~~a ", "```a"])
def test_a_crafted_line_formats_in_linear_time(unit: str) -> None:
    """Bold, strike and link patterns scanned to the end of the line from every place they
    could start: 16 KB of ``[`` took 2 s, this line (192 KB) would take minutes; it is
    one pass now (a test that ends is the check: the suite's timeout is 120 s)."""
    line = unit * (192 * 1024 // len(unit))
    out = to_mrkdwn(line)
    assert "\x00" not in out and len(out) >= len(line) // 2
    assert all(len(p) <= 4000 for p in split(out))
