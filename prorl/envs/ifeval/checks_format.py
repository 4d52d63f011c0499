"""Checkers about layout: `detectable_format:*`, `combination:*` and `startend:*`.

Semantics follow google-research `instruction_following_eval/instructions.py` (the 2025 version, in which
`**bold**` spans also count as highlighted sections).
"""

from __future__ import annotations

import json
import re

from prorl.envs.ifeval.checker import Checker, instruction

_NON_SPACE = re.compile(r"\S")


def count_bullets(text: str, marker: str) -> int:
    """`len(re.findall(r"^\\s*\\*[^\\*].*$", text, re.M))` for marker `*`, or the same with `^\\s*-.*$` for `-`
    (the official bullet patterns), in linear time: the regexes take quadratic time on long runs of blank lines.

    As in the regex, `\\s*` may cross newlines, and after `*` any character but `*` (a newline too) is taken.
    """
    count, start, n = 0, 0, len(text)
    while start <= n:  # `start` is a line start
        found = _NON_SPACE.search(text, start)
        if found is None:
            break  # only whitespace left: every remaining line start fails
        head = found.start()
        if marker == "-":
            matched, rest = text[head] == "-", head + 1
        else:
            matched, rest = text[head] == "*" and head + 1 < n and text[head + 1] != "*", head + 2
        if matched:
            count += 1
            end = text.find("\n", rest)  # `.*$` runs to the end of the line
            if end == -1:
                break
            start = end if text[end - 1] == "\n" else end + 1  # the next line start at or after the match end
        else:  # every line start up to `head` reaches the same `head`: go to the first one after it
            end = text.find("\n", head)
            if end == -1:
                break
            start = end + 1
    return count


@instruction("detectable_format:number_bullet_lists")
class NumberOfBullets(Checker):
    """Exactly `num_bullets` markdown bullet lines (`* item` or `- item`)."""

    num_bullets: int

    def check(self, response: str) -> bool:
        return count_bullets(response, "*") + count_bullets(response, "-") == self.num_bullets


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@instruction("detectable_format:constrained_response")
class ConstrainedResponse(Checker):
    """The response contains one of the fixed answers "My answer is yes./no./maybe."."""

    def check(self, response: str) -> bool:
        response = response.strip()
        return any(option in response for option in CONSTRAINED_RESPONSES)


_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_BOLD = re.compile(r"\*\*[^\n\*]*\*\*")


@instruction("detectable_format:number_highlighted_sections")
class NumberOfHighlights(Checker):
    """At least `num_highlights` non-empty `*highlighted*` spans on one line; `**bold**` spans count too."""

    num_highlights: int

    def check(self, response: str) -> bool:
        count = sum(1 for span in _HIGHLIGHT.findall(response) if span.strip("*").strip())
        count += sum(1 for span in _BOLD.findall(response) if span[2:-2].strip())
        return count >= self.num_highlights


@instruction("detectable_format:multiple_sections")
class MultipleSections(Checker):
    """At least `num_sections` sections, each opened by the splitter word and a number (`SECTION 1`);
    case-sensitive."""

    section_spliter: str
    num_sections: int

    def check(self, response: str) -> bool:
        pattern = r"\s?" + re.escape(self.section_spliter.strip()) + r"\s?\d+\s?"
        return len(re.split(pattern, response)) - 1 >= self.num_sections


_JSON_FENCE_PREFIXES = ("```json", "```Json", "```JSON", "```")


@instruction("detectable_format:json_format")
class JsonFormat(Checker):
    """The whole response parses as JSON, optionally inside one markdown code fence."""

    def check(self, response: str) -> bool:
        value = response.strip()
        for prefix in _JSON_FENCE_PREFIXES:
            value = value.removeprefix(prefix)
        value = value.removesuffix("```").strip()
        try:
            json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's limit
            return False
        return True


def titles(text: str) -> list[str]:
    """`re.findall(r"<<[^\\n]+>>", text)` (the official title pattern) in linear time. On a line, the first `<<`
    opens the only possible match, which the greedy `[^\\n]+` closes at the line's last `>>`."""
    found = []
    for line in text.split("\n"):
        start = line.find("<<")
        if start != -1:
            end = line.rfind(">>")
            if end >= start + 3:
                found.append(line[start:end + 2])
    return found


@instruction("detectable_format:title")
class Title(Checker):
    """A title in double angular brackets, `<<like this>>`, non-empty and on one line."""

    def check(self, response: str) -> bool:
        return any(title.lstrip("<").rstrip(">").strip() for title in titles(response))


@instruction("combination:two_responses")
class TwoResponses(Checker):
    """Two different responses separated by `******` (an empty piece is allowed only at either end)."""

    def check(self, response: str) -> bool:
        pieces = response.split("******")
        answers = []
        for index, piece in enumerate(pieces):
            if piece.strip():
                answers.append(piece.strip())
            elif index not in (0, len(pieces) - 1):
                return False
        return len(answers) == 2 and answers[0] != answers[1]


@instruction("combination:repeat_prompt")
class RepeatPrompt(Checker):
    """The response starts with the request, repeated word for word (case-insensitive, outer whitespace ignored)."""

    prompt_to_repeat: str

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())


@instruction("startend:end_checker")
class EndPhrase(Checker):
    """The response ends with `end_phrase` (case-insensitive; outer whitespace and double quotes ignored)."""

    end_phrase: str

    def check(self, response: str) -> bool:
        return response.strip().strip('"').lower().endswith(self.end_phrase.strip().lower())


@instruction("startend:quotation")
class Quotation(Checker):
    """The whole response (outer whitespace ignored) is wrapped in double quotation marks."""

    def check(self, response: str) -> bool:
        response = response.strip()
        return len(response) > 1 and response[0] == '"' and response[-1] == '"'
