"""Write tuned step counts into the records' size tables.

python bench/ladder_set_steps.py SIZE R=STEPS [R=STEPS ...]      e.g.  full 1=640 2=300
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

RECORDS = Path(__file__).resolve().parents[1] / "src" / "speedrunner" / "benchmarks" / "nanogpt_mini"


def set_steps(record: int, size: str, steps: int) -> None:
    path = RECORDS / f"record_{record}" / "train_gpt.py"
    src = path.read_text()
    pat = re.compile(rf'^(\s*"{size}": dict\(steps=)\d+', re.M)
    new, n = pat.subn(lambda m: m.group(1) + str(steps), src)
    assert n == 1, f"{path}: no {size} size line"
    path.write_text(new)


if __name__ == "__main__":
    size = sys.argv[1]
    for item in sys.argv[2:]:
        r, s = item.split("=")
        set_steps(int(r), size, int(s))
        print(f"record_{r} {size} steps={s}")
