"""Canonical forms of diagnosis names: the ways one name is written that do not change what it names.

`canonical(name)` folds, on top of `normalize_answer` (case, width, punctuation): accents (Sjögren = Sjogren),
possessives (Crohn's = Crohn), UK/US spelling (haem/hem, oe/e, ae/e, our/or), English plurals (gallstones =
gallstone, via `inflect`) and a short list of Latin/Greek words with plain English equivalents (renal = kidney,
cholelithiasis = gallstone). `name_forms(name)` adds the ICD-style comma inversion ("Anaemia, iron deficiency" =
"iron deficiency anaemia") and ICD-10's bracket conventions: nonessential modifiers in parentheses may be left out ("Essential
(primary) hypertension" = "essential hypertension"), alternative wordings in square brackets stand alone
("Varicella [chickenpox]" = "chickenpox").

Every fold is applied to both sides of a comparison, so it can only merge spellings, never tell two names apart.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import inflect

from clinical_rl.rewards.answer_format import normalize_answer

CJK = re.compile(r"[\u4e00-\u9fff]")
_POSSESSIVE = re.compile(r"(?<=\w)['’]s\b")
# ICD-10 conventions: "(...)" holds nonessential modifiers, "[...]" alternative wordings.
_PAREN = re.compile(r"\s*[(（\[]([^()（）\[\]]*)[)）\]]\s*")
# ICD-10 titles end in these when the code is the unspecified or residual member of its category.
UNSPECIFIED_SUFFIX = re.compile(r",\s*(?:site\s+)?unspecified\s*$", re.IGNORECASE)
RESIDUAL_SUFFIX = re.compile(r",\s*(?:(?:site\s+)?unspecified|not elsewhere classified)\s*$", re.IGNORECASE)
# UK -> US spellings, applied inside words (both sides get them, so over-folding cannot split two spellings).
_SPELLING = [(re.compile(p), r) for p, r in [
    (r"aem", "em"), (r"aed", "ed"), (r"aes", "es"), (r"oea", "ea"), (r"^oe", "e"), (r"^coe", "ce"),
    (r"foet", "fet"), (r"gynaec", "gynec"), (r"our$", "or"), (r"tre$", "ter"), (r"ise$", "ize"),
    (r"isation$", "ization"), (r"ae$", "a"),
]]
# Latin/Greek adjectives and nouns with an everyday English form used in diagnosis names.
_EQUIVALENT = {
    "renal": "kidney", "nephric": "kidney", "hepatic": "liver", "pulmonary": "lung", "cardiac": "heart",
    "cerebral": "brain", "gastric": "stomach", "cutaneous": "skin", "ocular": "eye", "ureteral": "ureteric",
    "calculus": "stone", "calculi": "stone", "cholelithiasis": "gallstone", "nephrolithiasis": "kidney stone",
    "urolithiasis": "urinary stone", "tumor": "neoplasm", "carcinoma": "cancer",
    "thromboembolism": "embolism",
}
_INFLECT = inflect.engine()
# Numbered types and stages: "type II" = "type 2", 二型 = Ⅱ型 (NFKC: "II型") = 2型.
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4"}
_ROMAN_NUMBERED = re.compile(r"\b(type|stage|grade|class|phase) (i{1,3}|iv)\b")
_ZH_NUMERAL = {"一": "1", "二": "2", "三": "3", "四": "4", "i": "1", "ii": "2", "iii": "3", "iv": "4"}
_ZH_NUMBERED = re.compile(r"(iii|ii|iv|i|一|二|三|四)(型|期|级)")


def fold(text: str) -> str:
    """Case, width (NFKC) and spacing folded; punctuation kept ("A (B)" and "A, B" stay apart)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def canonical(name: str) -> str:
    """`name` folded as the module docstring says; '' for an empty name. Chinese text keeps only its characters."""
    text = _POSSESSIVE.sub("", unicodedata.normalize("NFKC", name))
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    norm = normalize_answer(text)
    if CJK.search(norm):
        return _ZH_NUMBERED.sub(lambda m: _ZH_NUMERAL[m[1]] + m[2], norm.replace(" ", ""))
    return _ROMAN_NUMBERED.sub(lambda m: f"{m[1]} {_ROMAN[m[2]]}", " ".join(_word(w) for w in norm.split()))


def name_forms(name: str, alternatives: bool = True) -> frozenset[str]:
    """Canonical forms of `name` and of its ICD-style rewritings (comma inversion; with `alternatives`, the
    bracketed modifiers and wordings). Answers are folded without `alternatives`: brackets in an answer are a
    second candidate ("A [B]", "(Non-)Hodgkin lymphoma"), not a convention to honour."""
    stripped = RESIDUAL_SUFFIX.sub("", name.strip())
    texts = {stripped}
    paren = _PAREN.search(stripped) if alternatives else None
    if paren:
        before, after = stripped[: paren.start()], stripped[paren.end() :]
        texts.add(f"{before} {after}")  # (nonessential modifier) or [alternative wording] left out
        # "Varicella [chickenpox]": a short name's alternative stands alone ("... immunoglobulin M [IgM]" does not)
        if paren[0].strip().startswith("[") and not after.strip() and len(before.split()) <= 2:
            texts.add(paren[1])
    for text in list(texts):
        head, comma, rest = text.partition(",")
        if comma and "," not in rest and rest.strip():
            texts.add(f"{rest} {head}")  # "Anaemia, iron deficiency" -> "iron deficiency Anaemia"
    return frozenset(form for form in (canonical(t) for t in texts) if form)


@lru_cache(maxsize=65536)
def _word(word: str) -> str:
    for pattern, repl in _SPELLING:
        word = pattern.sub(repl, word)
    if word.isalpha() and len(word) > 3 and not word.endswith(("is", "us", "ss", "ies", "ae")):
        word = _INFLECT.singular_noun(word) or word  # False when already singular
    return _EQUIVALENT.get(word, word)


def contains_phrase(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words (or as a substring, for Chinese)."""
    if not phrase:
        return False
    if CJK.search(phrase):
        return phrase in text
    return f" {phrase} " in f" {text} "
