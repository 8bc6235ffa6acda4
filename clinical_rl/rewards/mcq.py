"""Multiple choice: which option an answer picks, and whether it commits to one.

The chosen option is read from a bare letter (also `$B$`, `\\boxed{B}`), the option's text, "the answer is
(B)"-style phrasing, "B. <that option's own text>", a contained option text (a binomial's genus may be abbreviated:
"E. coli" for Escherichia coli) or a near-identical one (rapidfuzz). Several letters ("A, B", "B or C"), several
options named in parts of a list, and a denial ("not Escherichia coli") are never a choice. An option may itself
say "not", so doubt and denial are looked for in what the answer says besides the options' texts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Literal

from rapidfuzz import fuzz

from clinical_rl.rewards.answer_format import normalize_answer
from clinical_rl.rewards.candidates import hedged, negated, split_candidates
from clinical_rl.rewards.name_forms import contains_phrase

Verdict = Literal["correct", "incorrect", "undecided"]

_ALTERNATIVE_WORDS = re.compile(r"\b(?:or|vs|versus|either)\b|/|或|还是", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^\s*[(\[]?([A-Za-z])[)\].:]?\s*$")
# Several option letters and nothing else: "A, B", "B or C", "A/B/D", "ABD".
_LETTER_LIST = re.compile(
    r"^\s*[(\[]?[A-Z][)\]]?(?:(?:\s*(?:,|/|;|、|&|或|和)\s*|\s+(?:or|and)\s+|\s+|(?<=[)\]]))[(\[]?[A-Z][)\]]?)+\s*$"
    r"|^\s*[A-Z]{2,5}\s*$")
_WRAPPER = re.compile(r"\\(?:boxed|text|textbf|mathrm)\s*\{([^{}]*)\}|\$+([^$]*)\$+")
# A letter counts only when it stands alone: "(B)", "B.", "B" at the end; never "A reduction in ..." or "D-dimer".
_LONE = r"(?:[(\[]([A-Z])[)\]]|([A-Z])(?=\s*(?:$|[.,;:!)]\s|[.,;:!)]?$)))"
_LETTER_PHRASE = re.compile(
    rf"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?{_LONE}"
    rf"|(?:答案|选项|选择|选)\s*(?:是|为|:)?\s*{_LONE}",
    re.IGNORECASE | re.MULTILINE,
)
# "B. Escherichia coli": a letter heading the option's own text (checked against that text, so "E. coli" is not E).
_LETTER_HEAD = re.compile(r"^\s*[(\[]?([A-Z])[)\].:]\s+(\S.*)$", re.DOTALL)


def choose_option(
    answer: str, options: Mapping[str, str], fuzzy_threshold: float = 90.0
) -> tuple[str | None, str]:
    """(letter, rule) of the option the answer picks; (None, "multiple") when it names several letters,
    (None, "none") when it picks none."""
    text = _unwrap(unicodedata.normalize("NFKC", answer))
    letters = {k.upper(): k for k in options}
    bare = _BARE_LETTER.match(text)
    if bare and bare[1].upper() in letters:
        return letters[bare[1].upper()], "mcq_letter"
    spam = _LETTER_LIST.match(text)
    named_letters = re.findall(r"[A-Z]", text)
    if spam and all(c in letters for c in named_letters) and len(set(named_letters)) > 1:
        return None, "multiple"
    norm = normalize_answer(text)
    exact = [k for k, v in options.items() if normalize_answer(v) == norm]
    if len(exact) == 1:
        return exact[0], "mcq_text"
    phrased = {m for groups in _LETTER_PHRASE.findall(text) for m in groups if m and m.upper() in letters}
    head = _LETTER_HEAD.match(text)
    if head and head[1].upper() in letters and _starts_with_option(head[2], options[letters[head[1].upper()]]):
        phrased.add(head[1])
    if len({p.upper() for p in phrased}) == 1:
        return letters[phrased.pop().upper()], "mcq_letter"
    contained = [k for k, v in options.items() if any(contains_phrase(norm, form) for form in _option_forms(v))]
    longest = [k for k in contained if not any(
        k != o and normalize_answer(options[k]) in normalize_answer(options[o]) for o in contained)]
    if len(longest) == 1:
        return longest[0], "mcq_contains"
    ratios = sorted(((fuzz.ratio(norm, normalize_answer(v)), k) for k, v in options.items()), reverse=True)
    if ratios and ratios[0][0] >= fuzzy_threshold and (len(ratios) == 1 or ratios[1][0] < ratios[0][0] - 10):
        return ratios[0][1], "mcq_fuzzy"
    return None, "none"


def verify_mcq(
    answer: str, options: Mapping[str, str], gold: str, fuzzy_threshold: float = 90.0
) -> tuple[Verdict, str]:
    """(verdict, rule) of an answer to a multiple-choice case whose gold letter is `gold`."""
    own_words = _without_options(answer, options)  # an option may itself say "not": that is no denial
    if negated(own_words):
        return "incorrect", "negated"
    if hedged(own_words):
        return "undecided", "hedged"
    if _ALTERNATIVE_WORDS.search(own_words):  # "Escherichia coli or GBS"
        return "undecided", "hedged"
    parts = split_candidates(answer).parts
    picked = {choose_option(part, options, fuzzy_threshold)[0] for part in parts} - {None}
    if len(parts) > 1 and len(picked) > 1:  # "B. E. coli or C. Listeria"
        return "incorrect", "multiple"
    if len(_mentioned_options(answer, options)) > 1:  # "B. Escherichia coli. Listeria monocytogenes is second."
        return "undecided", "several_options"
    letter, rule = choose_option(answer, options, fuzzy_threshold)
    if letter is None:
        return ("incorrect" if rule == "multiple" else "undecided"), rule
    return ("correct" if letter == gold else "incorrect"), rule


def _mentioned_options(answer: str, options: Mapping[str, str]) -> set[str]:
    """Options the answer names: by their text (or abbreviated genus), or by a word no other option has
    ("listeria" in "Listeria-like Escherichia coli"); an option inside a longer named one does not count."""
    text = _unwrap(unicodedata.normalize("NFKC", answer))
    head = _LETTER_HEAD.match(text)  # "B. Miosis ..." is a letter and a text, not the abbreviation "b miosis"
    norm = normalize_answer(head[2] if head else text)
    words = {k: set(normalize_answer(v).split()) for k, v in options.items()}
    named = set()
    for key, option in options.items():
        if len(normalize_answer(option)) < 3:  # options that are letters or digits are named by letter only
            continue
        own = {w for w in words[key] if len(w) >= 5 and w.isalpha()
               and not any(w in other for k, other in words.items() if k != key)}
        if any(contains_phrase(norm, form) for form in _option_forms(option)) or any(
                contains_phrase(norm, w) for w in own):
            named.add(key)
    return {k for k in named if not any(
        k != o and normalize_answer(options[k]) in normalize_answer(options[o]) for o in named)}


def _unwrap(text: str) -> str:
    """`$B$`, `\\boxed{B}`, `\\text{B}` -> `B` (the parser strips them too; MCQ letters come in many wrappers)."""
    previous = None
    while previous != text:
        previous, text = text, _WRAPPER.sub(lambda m: m[1] if m[1] is not None else m[2], text)
    return text


def _without_options(answer: str, options: Mapping[str, str]) -> str:
    """The answer with every option's text cut out, longest first, punctuation kept."""
    text = unicodedata.normalize("NFKC", answer)
    for option in sorted(options.values(), key=len, reverse=True):
        if option.strip():
            text = re.sub(re.escape(option.strip()), " ", text, flags=re.IGNORECASE)
    return text


def _option_forms(option: str) -> list[str]:
    """An option's text and, for a binomial name, its abbreviated genus ("escherichia coli" -> "e coli")."""
    norm = normalize_answer(option)
    words = norm.split()
    if len(words) == 2 and words[0].isalpha() and len(words[0]) > 2 and words[1].isalpha():
        return [norm, f"{words[0][0]} {words[1]}"]
    return [norm]


def _starts_with_option(rest: str, option: str) -> bool:
    return normalize_answer(rest).startswith(normalize_answer(option)) or fuzz.ratio(
        normalize_answer(rest), normalize_answer(option)) >= 90
