"""The QA checks a benchmark maintainer runs on generated questions, as pure functions with recorded rules
(manifests.annotations.QA_RULES): category constraints, a deterministic option shuffle, duplicate and
near-duplicate removal. The blind check needs a model and lives in the stage."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from manifests.annotations import LETTERS

T = TypeVar("T")

# 'Subject 1', 'person #2', 'Person A': HAIC's prompts name people by attributes only [E1]
SUBJECT_LABEL = re.compile(r"\b(?:subject|person)\s*#?\s*\d+\b|\b(?:[Ss]ubject|[Pp]erson) [A-D]\b", re.I)
SEQUENCE_PHRASES = ("immediately after", "just before")  # HAIC's Action Sequence template [E1]
MAX_SEQUENCE_OPTION_WORDS = 15  # HAIC: each Action Sequence option is at most 15 words [E1]
# A few function words carry no meaning of the question: without them "What does the man do with his hand?" and
# "What does a man do with the hand?" overlap fully.
STOPWORDS = frozenset("a an the of in on at to and or is are does do did his her their its this that with".split())


@dataclass(frozen=True)
class Dropped:
    question: str
    rule: str  # a key of QA_RULES

    def row(self) -> dict[str, str]:
        return {"question": self.question, "rule": self.rule}


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: what 'the same question' compares."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def tokens(text: str) -> frozenset[str]:
    return frozenset(t for t in normalise(text).split() if t not in STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Token-set overlap |a & b| / |a | b| (1.0 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def word_count(text: str) -> int:
    return len(text.split())


def choice_violation(category: str, question: str, options: Sequence[str],
                     max_sequence_words: int = MAX_SEQUENCE_OPTION_WORDS) -> str | None:
    """The first QA rule a multiple-choice question breaks (`options`: the answer first), or None. Category rules
    are HAICBench's [E1]; the rest hold for every style."""
    if not question.strip() or any(not o.strip() for o in options):
        return "empty_text"
    if SUBJECT_LABEL.search(question) or any(SUBJECT_LABEL.search(o) for o in options):
        return "subject_label"
    if len({normalise(o) for o in options}) < len(options):
        return "duplicate_options"
    if category == "Action Sequence":
        if not any(p in question.lower() for p in SEQUENCE_PHRASES):
            return "sequence_phrase"
        if any(word_count(o) > max_sequence_words for o in options):
            return "sequence_option_length"
    if category == "Count" and not question.strip().lower().startswith("how many"):
        return "count_phrase"
    return None


def shuffle_options(clip_id: str, question: str, correct: str, distractors: Sequence[str]) -> tuple[list[str], str]:
    """The options in an order seeded by (clip id, question), and the correct answer's letter. The model tends to
    write the answer first; a uniform permutation per question balances the letters over a dataset, and the
    same question of the same clip gets the same order on every run."""
    seed = int.from_bytes(hashlib.sha256(f"{clip_id}\x00{question}".encode()).digest()[:8], "big")
    options = [correct, *distractors]
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(0)]


def drop_duplicates(items: Sequence[T], text_of: Callable[[T], str], threshold: float | None,
                    ) -> tuple[list[T], list[Dropped]]:
    """Keep the first of each group of the same question (normalised text: rule duplicate) and of questions whose
    token overlap with a kept one is >= threshold (rule near_duplicate; None: off)."""
    kept: list[T] = []
    seen: dict[str, None] = {}
    kept_tokens: list[frozenset[str]] = []
    dropped: list[Dropped] = []
    for item in items:
        text = text_of(item)
        key = normalise(text)
        if key in seen:
            dropped.append(Dropped(text, "duplicate"))
            continue
        toks = tokens(text)
        if threshold is not None and any(jaccard(toks, other) >= threshold for other in kept_tokens):
            dropped.append(Dropped(text, "near_duplicate"))
            continue
        seen[key] = None
        kept_tokens.append(toks)
        kept.append(item)
    return kept, dropped


def true_false(answer: str) -> str | None:
    """'True', ' false.' -> 'true' / 'false'; anything else None."""
    value = answer.strip().lower().rstrip(".")
    return value if value in ("true", "false") else None
