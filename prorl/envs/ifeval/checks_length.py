"""Checkers about length and content: `length_constraints:*` and `detectable_content:*`.

Semantics follow google-research `instruction_following_eval/instructions.py`.
"""

from __future__ import annotations

import re

from prorl.envs.ifeval import text
from prorl.envs.ifeval.checker import Checker, InstructionError, Relation, compare, instruction


@instruction("length_constraints:number_sentences")
class NumberOfSentences(Checker):
    """Punkt sentences (NLTK English model) number `relation` `num_sentences`."""

    num_sentences: int
    relation: Relation

    def check(self, response: str) -> bool:
        return compare(text.count_sentences(response), self.relation, self.num_sentences)


@instruction("length_constraints:number_words")
class NumberOfWords(Checker):
    """`\\w+` words number `relation` `num_words`."""

    num_words: int
    relation: Relation

    def check(self, response: str) -> bool:
        return compare(text.count_words(response), self.relation, self.num_words)


_DIVIDER = re.compile(r"\s?\*\*\*\s?")


@instruction("length_constraints:number_paragraphs")
class NumberOfParagraphs(Checker):
    """Exactly `num_paragraphs` paragraphs separated by the markdown divider `***`. An empty paragraph is allowed
    only before the first or after the last divider; one in the middle fails the check."""

    num_paragraphs: int

    def check(self, response: str) -> bool:
        paragraphs = _DIVIDER.split(response)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                if index in (0, len(paragraphs) - 1):
                    count -= 1
                else:
                    return False
        return count == self.num_paragraphs


_FIRST_WORD_STOP = frozenset(".,?!'\"")


@instruction("length_constraints:nth_paragraph_first_word")
class NthParagraphFirstWord(Checker):
    """Exactly `num_paragraphs` non-empty paragraphs separated by blank lines (`\\n\\n`), and paragraph
    `nth_paragraph` (1-based) starts with `first_word` (case-insensitive; leading quotes and anything from the first
    punctuation mark on are ignored).

    Like the official checker, the count skips empty pieces but the n-th paragraph is taken from the list as split
    on `\\n\\n`, empty pieces included: with a run of four newlines before it, the n-th piece is empty and the check
    fails.
    """

    num_paragraphs: int
    nth_paragraph: int
    first_word: str

    def validate(self) -> None:
        if not 1 <= self.nth_paragraph <= self.num_paragraphs:
            raise InstructionError(f"{self.instruction_id}: nth_paragraph must be in 1..num_paragraphs "
                                   f"({self.num_paragraphs}), got {self.nth_paragraph}")

    def check(self, response: str) -> bool:
        paragraphs = response.split("\n\n")
        count = sum(1 for p in paragraphs if p.strip())
        if self.nth_paragraph > count:
            return False
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first = []
        for char in word:
            if char in _FIRST_WORD_STOP:
                break
            first.append(char.lower())
        return count == self.num_paragraphs and "".join(first) == self.first_word.lower()


def count_placeholders(text: str) -> int:
    """`len(re.findall(r"\\[.*?\\]", text))` (the official placeholder pattern) in linear time: a `[` is closed by
    the first `]` on its line; without one, no later `[` of that line is closed either."""
    count, start, line_end = 0, text.find("["), -1
    while start != -1:
        if line_end < start:  # the end of the line holding `start` (len(text) on the last line)
            line_end = text.find("\n", start)
            line_end = len(text) if line_end == -1 else line_end
        close = text.find("]", start + 1, line_end)
        if close != -1:
            count += 1
            start = text.find("[", close + 1)
        else:
            start = text.find("[", line_end + 1)
    return count


@instruction("detectable_content:number_placeholders")
class NumberOfPlaceholders(Checker):
    """At least `num_placeholders` square-bracket placeholders such as `[address]`."""

    num_placeholders: int

    def check(self, response: str) -> bool:
        return count_placeholders(response) >= self.num_placeholders


@instruction("detectable_content:postscript")
class Postscript(Checker):
    """The postscript marker appears (case-insensitive): `P.S.` also matches `p. s.`, `P.P.S` also `p. p. s`; any
    other marker is matched literally. (The official patterns wrap these in `\\s*...$`, which changes no verdict
    and takes quadratic time on long whitespace runs.)"""

    postscript_marker: str

    def check(self, response: str) -> bool:
        marker = self.postscript_marker.strip()
        if marker == "P.P.S":
            pattern = r"p\.\s?p\.\s?s"
        elif marker == "P.S.":
            pattern = r"p\.\s?s\."
        else:
            pattern = re.escape(marker.lower())
        return re.search(pattern, response.lower()) is not None
