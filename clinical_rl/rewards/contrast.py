"""Contrasting qualifiers: two names that differ by one of these name different diseases.

Two sources, both applied to canonical forms (`name_forms.canonical`):
- `icd10_names.sibling_contrasts()`: the ≈ 2,000 word pairs that are the whole difference between two sibling
  ICD-10 titles (acute/chronic, colon/rectum, bacterial/viral, generalized/localized, ...), derived, not listed;
- `_GROUPS` below: what ICD-10 does not split into siblings but clinicians do (where the disease was acquired,
  essential vs secondary, type 1/2, laterality, hyper/hypo), in English and Chinese.
English names are compared as word sets: they contrast when a word only one has and a word only the other has form
a contrasting pair ("community acquired pneumonia" / "hospital acquired pneumonia"). Chinese names, which have no
word boundaries, contrast when qualifier groups found in both disagree (社区获得性 / 医院获得性), or when they have
the same length and differ only at positions whose characters contrast (肝内 / 肝外).
"""

from __future__ import annotations

import re
from functools import lru_cache

from clinical_rl.rewards.icd10_names import sibling_contrasts
from clinical_rl.rewards.name_forms import CJK, canonical

_GROUPS_EN: tuple[frozenset[str], ...] = tuple(frozenset(g.split()) for g in [
    "community hospital nosocomial ventilator healthcare", "essential secondary", "primary secondary",
    "left right bilateral", "unilateral bilateral", "upper lower", "acute chronic subacute", "benign malignant",
    "internal external", "inner outer", "anterior posterior", "proximal distal", "central peripheral",
    "systolic diastolic", "ischemic hemorrhagic", "congenital acquired", "stable unstable", "focal generalized",
    "obstructive nonobstructive", "complete incomplete partial", "open closed", "typical atypical",
    "1 2 3 4 i ii iii iv", "a b c d e", "idiopathic secondary", "juvenile adult", "infectious noninfectious",
    "early late", "mild moderate severe", "active latent", "sensitive resistant", "positive negative",
    "intrahepatic extrahepatic", "intracapsular extracapsular", "complicated uncomplicated",
])
_GROUPS_ZH: tuple[tuple[str, ...], ...] = tuple(tuple(g.split()) for g in [
    "社区获得性 医院获得性 院内 呼吸机相关", "原发性 继发性", "急性 慢性 亚急性", "良性 恶性", "1型 2型 一型 二型 Ⅰ型 Ⅱ型",
    "左侧 右侧 双侧", "亢进 减退", "甲型 乙型 丙型 丁型 戊型",
    "细菌性 病毒性 真菌性", "稳定型 不稳定型", "缺血性 出血性", "单侧 双侧", "轻度 中度 重度", "阳性 阴性",
])
# Characters whose swap at one position changes the disease (肝内/肝外, 左/右, 亢/减, 急/慢).
_CHAR_GROUPS: tuple[frozenset[str], ...] = tuple(frozenset(g) for g in [
    "内外", "左右双", "上下", "急慢", "良恶", "原继", "前后", "亢减", "高低", "12ⅠⅡ一二", "甲乙丙丁戊",
])
_HYPER_HYPO = re.compile(r"^(hyper|hypo)(.+)$")


def differ_by_contrast(a: str, b: str) -> bool:
    """True when names `a` and `b` carry contrasting qualifiers (either language; see the module docstring)."""
    ca, cb = canonical(a), canonical(b)
    if not ca or not cb or ca == cb:
        return False
    if CJK.search(ca) or CJK.search(cb):
        return _differ_zh(ca, cb)
    words_a, words_b = set(ca.split()), set(cb.split())
    only_a, only_b = words_a - words_b, words_b - words_a
    if len(words_a) == len(only_a) == len(only_b) == len(words_b) == 1:  # hyperkalemia / hypokalemia
        return _hyper_hypo(ca, cb)
    # Names with no word in common are not one name with two qualifiers ("rubella" / "german measles").
    return bool(words_a & words_b) and any(_contrasting(x, y) for x in only_a for y in only_b)


def _contrasting(x: str, y: str) -> bool:
    return _hyper_hypo(x, y) or frozenset((x, y)) in sibling_contrasts() or any(x in g and y in g for g in _GROUPS_EN)


def _hyper_hypo(x: str, y: str) -> bool:
    hx, hy = _HYPER_HYPO.match(x), _HYPER_HYPO.match(y)
    return bool(hx and hy and hx[1] != hy[1] and hx[2] == hy[2])


def _differ_zh(a: str, b: str) -> bool:
    for group in _GROUPS_ZH:
        found_a, found_b = _found(a, group), _found(b, group)
        if found_a and found_b and not found_a & found_b:  # 慢阻肺急性加重 keeps 慢性: no contrast
            return True
    if len(a) != len(b):
        return False
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    return all(any(x in g and y in g for g in _CHAR_GROUPS) for x, y in diffs)


@lru_cache(maxsize=65536)
def _found(text: str, group: tuple[str, ...]) -> frozenset[str]:
    """Members of `group` in `text`, without those only found inside a longer member (急性 inside 亚急性)."""
    hits = [m for m in group if m in text]
    return frozenset(m for m in hits if not any(m != o and m in o and text.count(m) == text.count(o) for o in hits))
