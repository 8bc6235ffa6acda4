"""Only clinical_rl/device.py names an accelerator: the rest of the code is the same on CPU and GPU."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clinical_rl"
FORBIDDEN = re.compile(r"""torch\.cuda|["']cuda["']|["']nccl["']|\.cuda\(""")


def test_no_accelerator_names_outside_device_py():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{lineno}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "device.py"
        for lineno, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert not offenders, "device-specific code outside device.py:\n" + "\n".join(offenders)


def test_the_check_catches_a_violation():
    assert FORBIDDEN.search('x = torch.device("cuda")') and FORBIDDEN.search("t.cuda()")
