"""ICD-10 -> department through the code hierarchy, including Chinese extension codes."""

import pytest

from clinical_rl.data.departments import DEPARTMENTS, department_of, normalize_icd10


@pytest.mark.parametrize(
    ("code", "department"),
    [
        ("J18.9", "respiratory"), ("J45", "respiratory"), ("A15.0", "respiratory"), ("C34.1", "respiratory"),
        ("K35.8", "gastroenterology"), ("B18.1", "gastroenterology"), ("C16.9", "gastroenterology"),
        ("N20.0", "urology"), ("N40", "urology"), ("C61", "urology"),
        ("I21.0", "cardiology"), ("I48", "cardiology"), ("I10", "cardiology"),
        ("M05.9", "immunology"), ("M32.1", "immunology"), ("M45", "immunology"), ("D84.9", "immunology"),
        ("G40.9", "neurology"), ("I63.9", "neurology"), ("I61", "neurology"),  # stroke is cerebrovascular
        ("E11.9", "endocrinology"), ("E05.0", "endocrinology"), ("C73", "endocrinology"),
        # outside the seven
        ("S72.0", "other"), ("O80", "other"), ("K02.1", "other"), ("D69.4", "other"), ("F32.9", "other"),
        ("M47.8", "other"), ("N80.0", "other"),
    ],
)
def test_department_of_known_codes(code, department):
    assert department_of(code) == department


@pytest.mark.parametrize(
    ("code", "item"),
    [("D69.405", "D69.4"), ("J18.900x001", "J18.9"), ("i21.001", "I21.0"), ("E11.900", "E11.9"), ("K35", "K35"),
     (" n20.0 ", "N20.0")],
)
def test_extension_codes_reduce_to_their_icd10_item(code, item):
    assert normalize_icd10(code) == item
    assert department_of(code) == department_of(item)


@pytest.mark.parametrize("code", ["", "XYZ", "E1", "Z99.99.9", "12.3", "U07.1x"])
def test_unknown_or_malformed_codes_are_other(code):
    assert department_of(code) == "other"
    assert department_of(None) == "other"


def test_the_seven_departments_and_other():
    assert DEPARTMENTS[-1] == "other" and len(DEPARTMENTS) == 8
    covered = {department_of(c) for c in ("J18", "K35", "N20", "I21", "M05", "G40", "E11", "S72")}
    assert covered == set(DEPARTMENTS)
