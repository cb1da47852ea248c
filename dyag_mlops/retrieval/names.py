"""The names and words of an index: the documents a question names, the
names it gives that the index lacks and whether it shares a word with a
document (a question about something else gets no context), and its
misspelt or abbreviated words written as the index writes them. Built from
the index's chunks, the corpus profile's aliases and the language's words
(the embedding model's vocabulary, the schema's word vectors, wordfreq's
word list)."""

from __future__ import annotations

import functools
import re
from typing import Any

from dyag_mlops.data.inventory import STEM, Profile, Schema, field_questions
from dyag_mlops.data.text import normalise
from dyag_mlops.retrieval.embeddings import load_vectors

# A word that looks like an application name: 4+ characters, 2+ capitals
# ("PEGASE", "GéoPlan", "VELO-Reg"); "CMS", "Qui" or "Le" do not.
NAME_LIKE = re.compile(r"\w[\w-]*\w")
NAME_MIN_LENGTH, NAME_MIN_CAPITALS = 4, 2
# How close (difflib ratio) a word must be to a document name to count as a misspelling of it.
NAME_TYPO_RATIO = 0.8
# Shorter words are not corrected: one changed letter of four is another word.
TYPO_MIN_LENGTH = 5
# Shorter words are not read as abbreviations of a label word ("deps", "lic").
ABBREVIATION_MIN_LENGTH = 3
# A known word followed by this many letters or more is another form of it
# ("installer" of "install"), not a misspelling.
FORM_SUFFIX = 2
# A word that at most this many documents hold speaks of them ("pyca").
DISTINCTIVE_DOCS = 1
# A word at least this frequent in the language is a word of it (wordfreq's
# Zipf scale: 2.5 is once in about three million words; "installer" 2.9,
# "tagline" 3.1, the misspelt "verison" 1.5).
COMMON_ZIPF = 2.5
# A word at least this frequent (about once in 30,000 words: "latest",
# "dernière"; "graph" 4.1, "tiling" 2.9) describes no one document.
FREQUENT_ZIPF = 4.5
# Shorter words of the list are as often abbreviations ("ver", "lic", "desc"):
# the list counts for words of this many letters or more.
WORD_LIST_MIN_LENGTH = 5


def _subsequence(short: str, long: str) -> bool:
    """Whether the letters of `short` appear in `long` in order ("deps" in "depends")."""
    letters = iter(long)
    return all(c in letters for c in short)


def _name_tokens(name: str) -> tuple[str, ...]:
    return tuple(normalise(name).split())


def _contains(tokens: list[str], name: tuple[str, ...]) -> bool:
    n = len(name)
    return any(tuple(tokens[i : i + n]) == name for i in range(len(tokens) - n + 1))


class Catalogue:
    """Document names -> doc ids, and every word of the index."""

    def __init__(self, profile: Profile, schema: Schema, language_vocabulary: dict[str, Any]):
        self.profile, self.schema = profile, schema
        self._vocab = language_vocabulary  # the embedding model's tokenizer vocabulary
        self.names: dict[tuple[str, ...], set[str]] = {}
        # Every word the index holds, and each pair of neighbours glued
        # ("MOBI-Pass" -> "mobipass"): what a name must be among to be known.
        self.vocabulary: set[str] = set()
        # The documents holding each word, counted up to DISTINCTIVE_DOCS + 1.
        self._docs_of_word: dict[str, set[str]] = {}
        # A word as the corpus or its fields' wording writes it, by its
        # normalised form ("developpee" -> "développée"): what a correction
        # is written as (the router's word vectors know the accented word).
        self._written: dict[str, str] = {}
        for doc_id, names in profile.aliases.items():
            for name in names:
                self._add_name(name, doc_id)

    def add_chunk(self, doc_id: str, title: str, text: str) -> None:
        self._add_name(title, doc_id)
        self._remember_writing(f"{title} {text}")
        words = normalise(f"{title} {text}").split()
        self.vocabulary.update(words)
        for word in set(words):
            holders = self._docs_of_word.setdefault(word, set())
            if len(holders) <= DISTINCTIVE_DOCS:
                holders.add(doc_id)
        self.vocabulary.update(a + b for a, b in zip(words, words[1:]))

    def _remember_writing(self, text: str) -> None:
        for word in re.findall(r"\w+", text.lower()):
            if not word.isascii():
                self._written.setdefault(normalise(word), word)

    def _add_name(self, name: str, doc_id: str) -> None:
        tokens = _name_tokens(name)
        if tokens and doc_id:
            self.names.setdefault(tokens, set()).add(doc_id)
            if len(tokens) > 1:
                # People type "esubv" or "mobipass" for e-Subv and MOBI-Pass.
                self.names.setdefault(("".join(tokens),), set()).add(doc_id)

    @functools.cached_property
    def _field_wording(self) -> set[str]:
        """The words of the fields' questions and labels, and the stop words
        (and how the accented ones are written, for `spelled`)."""
        words = set(self.schema.stop_words)
        for info in self.profile.fields:
            for text in field_questions(info, self.schema) + list(info.labels):
                words.update(normalise(text).split())
                self._remember_writing(text)
        return words

    @functools.cached_property
    def _known_words(self) -> set[str]:
        """The index's words and the wording of its fields' questions."""
        return set(self.vocabulary) | self._field_wording

    def distinctive_words(self, question: str) -> list[str]:
        """Words of the question (4+ letters, not the fields' wording, not
        among the language's most frequent) that at most DISTINCTIVE_DOCS
        documents hold: the question speaks of those documents, whatever
        other name it gives: "the pyca crypto package" is the one document
        holding "pyca", not the unknown "crypto". "latest" of "the latest
        version of tqdm" says nothing of the one document that holds it."""
        _, _, frequency = self._language_words
        return [
            w for w in normalise(question).split()
            if len(w) >= 4
            and w not in self._field_wording
            and 0 < len(self._docs_of_word.get(w, ())) <= DISTINCTIVE_DOCS
            and not (frequency is not None and frequency(w) >= FREQUENT_ZIPF)
        ]

    def shares_a_word(self, question: str, text: str) -> bool:
        """Whether `text` holds one of the question's own words (4+ letters,
        not the fields' wording), by stem; True for a question without any.
        A question that names no document and shares no word with the one
        found closest in meaning ("emacs: what section?", of a corpus
        without emacs) is about something the index does not hold. A
        misspelt name ("MAERA" of MAREA) counts as shared, as for
        `unknown_names`."""
        asked = [w for w in normalise(question).split() if len(w) >= 4 and w not in self._field_wording]
        held = {w[:STEM] for w in normalise(text).split()}
        return not asked or any(w[:STEM] in held or self._misspells_a_name(w) for w in asked)

    def _misspells_a_name(self, key: str) -> bool:
        """Whether `key` (normalised, spaces removed) is NAME_TYPO_RATIO alike a document name."""
        import difflib

        return bool(difflib.get_close_matches(key, ["".join(n) for n in self.names], n=1, cutoff=NAME_TYPO_RATIO))

    @functools.cached_property
    def _known_by_letter(self) -> dict[str, list[str]]:
        """`_known_words` by first letter: where `spelled` looks for a correction."""
        by_letter: dict[str, list[str]] = {}
        for word in sorted(self._known_words):
            by_letter.setdefault(word[0], []).append(word)
        return by_letter

    @functools.cached_property
    def _language_words(self) -> tuple[Any, Any, Any]:
        """The words of the language: the embedding model's tokenizer
        vocabulary, the schema's word vectors (None without) and wordfreq's
        Zipf frequency in the schema's language (None for a language it
        holds no list of: a user's schema may name any)."""
        from wordfreq import zipf_frequency

        lexemes = load_vectors(self.schema.word_vectors).vocab if self.schema.word_vectors else None
        try:
            zipf_frequency("a", self.schema.language)
            frequency = functools.partial(zipf_frequency, lang=self.schema.language)
        except (LookupError, ValueError):
            frequency = None
        return self._vocab, lexemes, frequency

    def _is_common_word(self, word: str) -> bool:
        """A word of the language ("released" is English, not a misspelling of
        the corpus's "related") or of the index and its fields' wording; a
        hyphenated word is common when each part is ("arch-specific"). The
        language's words: the embedding model's vocabulary, the schema's word
        vectors and wordfreq's word list, which holds the words a 30,000-piece
        tokenizer splits ("installer", "tagline")."""
        vocab, lexemes, frequency = self._language_words

        def common(part: str) -> bool:
            lower = part.lower()
            return (
                normalise(lower) in self._known_words
                or lower in vocab
                or normalise(lower) in vocab
                or (lexemes is not None and lower in lexemes.strings and lexemes[lower].has_vector)
                or (frequency is not None and len(lower) >= WORD_LIST_MIN_LENGTH and frequency(lower) >= COMMON_ZIPF)
            )

        return all(common(p) for p in word.split("-") if p)

    def spelled(self, question: str) -> str:
        """The question with each misspelt word (no common word) replaced by
        the closest word of the index or its fields' wording (TYPO_MIN_LENGTH
        letters or more, NAME_TYPO_RATIO alike, same first letter): "cipherkti
        verison" reads "cipherkit version", so retrieval finds the document and
        the router the field. A word close to nothing, or a known word with a
        suffix (FORM_SUFFIX), is left as written. First, a word (no common
        word) whose letters are, in order, those of one label word, from its
        first two, is that word: "deps" reads "dependencies", "ver" "version"."""
        import difflib

        def fix(match: re.Match) -> str:
            word = match.group()
            key = normalise(word)
            if len(key) < TYPO_MIN_LENGTH or " " in key or self._is_common_word(word):
                return word
            close = difflib.get_close_matches(key, self._known_by_letter.get(key[0], []), n=1, cutoff=NAME_TYPO_RATIO)
            if not close or (key.startswith(close[0]) and len(key) - len(close[0]) >= FORM_SUFFIX):
                return word
            return self._written.get(close[0], close[0])

        def expand(match: re.Match) -> str:
            word = match.group()
            key = normalise(word)
            if len(key) < ABBREVIATION_MIN_LENGTH or " " in key or self._is_common_word(word):
                return word
            meant = {w for w in self._label_words if len(w) > len(key) and w[:2] == key[:2] and _subsequence(key, w)}
            if len(meant) != 1:
                return word
            (label_word,) = meant
            return self._written.get(label_word, label_word)

        return re.sub(r"\w+", fix, re.sub(r"\w+", expand, question))

    @functools.cached_property
    def _label_words(self) -> set[str]:
        """The words of the fields' labels ("requires", "python")."""
        return {w for info in self.profile.fields for label in info.labels for w in normalise(label).split()}

    def named_documents(self, question: str) -> list[str]:
        """Doc ids of the documents a question names; a name inside a longer
        matched name ("SIG" in "SIG-Eau") does not count. Neighbouring words
        glued count too ("logrota 3" names logrota3)."""
        words = normalise(question).split()
        glued = {a + b for a, b in zip(words, words[1:])}
        found = [name for name in self.names if _contains(words, name) or (len(name) == 1 and name[0] in glued)]
        kept = [n for n in found if not any(o != n and len(o) > len(n) and _contains(list(o), n) for o in found)]
        return sorted({doc_id for name in kept for doc_id in self.names[name]})

    def unknown_names(self, question: str) -> list[str]:
        """Words of the question that look like names (NAME_LIKE) of things the
        index does not hold: no chunk has them, they misspell no document name,
        and they are in capitals or no common word."""
        unknown = []
        for match in NAME_LIKE.finditer(question):
            word = match.group()
            if len(word) < NAME_MIN_LENGTH:
                continue
            key = "".join(normalise(word).split())
            if key in self.vocabulary or self._misspells_a_name(key):
                continue
            # Capitals ("PEGASE", "GéoPlan"), or a word neither the language
            # nor the fields' wording holds ("zenquard", "vortexdb").
            if sum(c.isupper() for c in word) >= NAME_MIN_CAPITALS or not self._is_common_word(word):
                unknown.append(word)
        return unknown
