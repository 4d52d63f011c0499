"""Checkers about words and letters: `keywords:*`, `language:*`, `change_case:*` and `punctuation:*`.

Semantics follow google-research `instruction_following_eval/instructions.py`. One deliberate difference: keywords
are matched literally (`re.escape`), where the official code uses them as regular expressions; no keyword of the
official data contains a regex metacharacter, so the verdicts there are the same.
"""

from __future__ import annotations

import collections
import re

from prorl.envs.ifeval import text
from prorl.envs.ifeval.checker import Checker, InstructionError, Relation, compare, instruction


def _has_word(word: str, response: str) -> bool:
    return re.search(re.escape(word), response, flags=re.IGNORECASE) is not None


@instruction("keywords:existence")
class KeywordExistence(Checker):
    """Every keyword appears somewhere (case-insensitive substring)."""

    keywords: tuple[str, ...]

    def check(self, response: str) -> bool:
        return all(_has_word(keyword, response) for keyword in self.keywords)


@instruction("keywords:frequency")
class KeywordFrequency(Checker):
    """The keyword (case-insensitive substring, whitespace around it stripped) appears `relation` `frequency` times."""

    keyword: str
    frequency: int
    relation: Relation

    def check(self, response: str) -> bool:
        count = len(re.findall(re.escape(self.keyword.strip()), response, flags=re.IGNORECASE))
        return compare(count, self.relation, self.frequency)


@instruction("keywords:forbidden_words")
class ForbiddenWords(Checker):
    """None of the words appears as a whole word (`\\b` boundaries, case-insensitive)."""

    forbidden_words: tuple[str, ...]

    def check(self, response: str) -> bool:
        return not any(re.search(rf"\b{re.escape(word)}\b", response, flags=re.IGNORECASE)
                       for word in self.forbidden_words)


@instruction("keywords:letter_frequency")
class LetterFrequency(Checker):
    """The character (compared lower-cased) appears `let_relation` `let_frequency` times. Like the official checker
    of 2025, the character asked for is counted literally even when it is not a letter (`#`, `!`)."""

    letter: str
    let_frequency: int
    let_relation: Relation

    def validate(self) -> None:
        if len(self.letter.strip()) != 1:
            raise InstructionError(f"{self.instruction_id}: kwarg 'letter' must be one character, got {self.letter!r}")

    def check(self, response: str) -> bool:
        count = collections.Counter(response.lower())[self.letter.strip().lower()]
        return compare(count, self.let_relation, self.let_frequency)


@instruction("language:response_language")
class ResponseLanguage(Checker):
    """langdetect's verdict on the whole response is `language`. Undecidable text counts as followed (official)."""

    language: str

    def validate(self) -> None:
        if self.language not in text.supported_languages():
            raise InstructionError(f"{self.instruction_id}: language {self.language!r} is not one langdetect knows: "
                                   f"{sorted(text.supported_languages())}")

    def check(self, response: str) -> bool:
        detected = text.detect_language(response)
        return detected is None or detected == self.language


@instruction("change_case:capital_word_frequency")
class CapitalWordFrequency(Checker):
    """Words in all capitals (NLTK word tokens with `str.isupper`) appear `capital_relation` `capital_frequency`
    times."""

    capital_frequency: int
    capital_relation: Relation

    def check(self, response: str) -> bool:
        count = sum(1 for token in text.word_tokens(response) if token.isupper())
        return compare(count, self.capital_relation, self.capital_frequency)


@instruction("change_case:english_capital")
class EnglishCapital(Checker):
    """All cased characters are upper case and the text is English (undecidable language counts as English)."""

    def check(self, response: str) -> bool:
        return response.isupper() and text.detect_language(response) in ("en", None)


@instruction("change_case:english_lowercase")
class EnglishLowercase(Checker):
    """All cased characters are lower case and the text is English (undecidable language counts as English)."""

    def check(self, response: str) -> bool:
        return response.islower() and text.detect_language(response) in ("en", None)


@instruction("punctuation:no_comma")
class NoComma(Checker):
    """No ASCII comma anywhere."""

    def check(self, response: str) -> bool:
        return "," not in response
