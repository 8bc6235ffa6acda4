"""The case schema every loader produces, and the built-in clinical vignettes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from clinical_rl.data.departments import DEPARTMENTS, Department, department_of

Language = Literal["zh", "en"]


@dataclass(frozen=True)
class Case:
    """One verifiable clinical case: what the model reads and the reference its answer is judged against."""

    question: str  # the case text the model reads
    answer: str  # the gold diagnosis (or the gold option's text for MCQ), free text
    id: str = ""
    options: Mapping[str, str] | None = None  # MCQ: letter -> option text
    answer_letter: str | None = None  # MCQ: the gold option's letter
    icd10: str | None = None
    department: Department | None = None  # None: derived from icd10 (`other` without one)
    language: Language = "en"
    source: str = ""  # dataset name or file the case came from

    def __post_init__(self) -> None:
        if self.department is None:
            object.__setattr__(self, "department", department_of(self.icd10))
        if self.department not in DEPARTMENTS:
            raise ValueError(f"department {self.department!r} is not one of {', '.join(DEPARTMENTS)}")
        if self.language not in ("zh", "en"):
            raise ValueError(f"language {self.language!r} is not 'zh' or 'en'")
        if self.options is not None and self.answer_letter is not None and self.answer_letter not in self.options:
            raise ValueError(f"answer_letter {self.answer_letter!r} is not among options {sorted(self.options)}")


# Short textbook vignettes; the knowledge-base generator (issue 3) supersedes these as the default dataset.
BUILTIN_CASES: tuple[Case, ...] = tuple(
    Case(q, a)
    for q, a in [
        ("A 58-year-old smoker has 3 days of fever, productive cough and right-sided pleuritic chest pain. "
         "Crackles and bronchial breath sounds at the right base; chest X-ray shows right lower lobe consolidation.",
         "Community-acquired pneumonia"),
        ("A 24-year-old has episodic wheeze, chest tightness and night cough, worse with cold air; spirometry "
         "shows reversible airflow obstruction after salbutamol.", "Asthma"),
        ("A 66-year-old with 40 pack-years has chronic productive cough and progressive exertional dyspnoea; "
         "FEV1/FVC is 0.58 and does not reverse with bronchodilator.", "Chronic obstructive pulmonary disease"),
        ("A 45-year-old woman on oral contraceptives, 10 days after a long flight, has sudden dyspnoea, pleuritic "
         "pain and tachycardia; D-dimer is raised and CT angiography shows a filling defect.",
         "Pulmonary embolism"),
        ("A 35-year-old has burning epigastric pain relieved by meals and worse at night; urea breath test is "
         "positive.", "Duodenal ulcer"),
        ("A 52-year-old woman has colicky right upper quadrant pain after fatty meals, fever and a positive "
         "Murphy sign; ultrasound shows gallstones and a thickened gallbladder wall.", "Acute cholecystitis"),
        ("A 48-year-old heavy drinker has severe epigastric pain radiating to the back with vomiting; serum lipase "
         "is five times the upper limit.", "Acute pancreatitis"),
        ("A 19-year-old has periumbilical pain migrating to the right iliac fossa, anorexia, low-grade fever and "
         "rebound tenderness at McBurney's point.", "Acute appendicitis"),
        ("A 30-year-old woman has dysuria, frequency and urgency for 2 days without fever; urine dipstick is "
         "positive for nitrites and leukocytes.", "Cystitis"),
        ("A 40-year-old man has sudden severe colicky flank pain radiating to the groin with haematuria; CT shows "
         "a 5 mm ureteric calculus.", "Ureteric stone"),
        ("A 70-year-old man has nocturia, a weak stream and hesitancy; the prostate is smooth and enlarged on "
         "rectal exam, PSA is mildly raised.", "Benign prostatic hyperplasia"),
        ("A 26-year-old woman has fever, rigors, flank pain and costovertebral angle tenderness; urine shows white "
         "cell casts.", "Acute pyelonephritis"),
        ("A 62-year-old diabetic has 40 minutes of crushing central chest pain radiating to the left arm with "
         "sweating; ECG shows ST elevation in II, III and aVF and troponin is raised.",
         "Acute myocardial infarction"),
        ("A 74-year-old has palpitations and an irregularly irregular pulse; ECG shows no P waves and an "
         "irregular narrow-complex rhythm.", "Atrial fibrillation"),
        ("A 68-year-old with prior infarction has orthopnoea, ankle oedema and basal crackles; BNP is high and "
         "echo shows an ejection fraction of 30%.", "Heart failure"),
        ("A 55-year-old has repeated clinic blood pressures of 165/100 mmHg with no symptoms and a normal "
         "secondary work-up.", "Essential hypertension"),
        ("A 32-year-old woman has symmetric small-joint arthritis of both hands with morning stiffness over an "
         "hour; anti-CCP antibodies are positive.", "Rheumatoid arthritis"),
        ("A 25-year-old woman has a malar rash, photosensitivity, arthralgia and proteinuria; ANA and anti-dsDNA "
         "are positive.", "Systemic lupus erythematosus"),
        ("A 28-year-old man has inflammatory low back pain improving with exercise; MRI shows sacroiliitis and he "
         "is HLA-B27 positive.", "Ankylosing spondylitis"),
        ("A 67-year-old has sudden right arm and face weakness with aphasia for 2 hours; CT excludes bleeding.",
         "Ischaemic stroke"),
        ("A 22-year-old woman has recurrent unilateral throbbing headaches with nausea and photophobia lasting a "
         "day, preceded by zigzag visual lines.", "Migraine"),
        ("A 72-year-old has a resting tremor of the right hand, bradykinesia and cogwheel rigidity.",
         "Parkinson disease"),
        ("A 16-year-old has polyuria, polydipsia, weight loss and vomiting; glucose is 28 mmol/L with ketonaemia "
         "and a metabolic acidosis.", "Diabetic ketoacidosis"),
        ("A 34-year-old woman has weight loss, heat intolerance, tremor, a diffuse goitre and exophthalmos; TSH is "
         "suppressed and free T4 high.", "Graves disease"),
    ]
)

