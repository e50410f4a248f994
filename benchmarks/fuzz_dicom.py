"""The long fuzz run: N mutated copies of a tiny phantom study, each scanned and prepared
(``tests/fuzz_harness.py``). ``--kinds bytes``: truncations, random header bytes, zeroed and repeated ranges,
absurd element lengths, empty files. ``--kinds fields``: NaN, zero, negative or absurd values, wrong VRs,
missing or contradictory geometry; the mutated CT series of every ``--translate-every``-th case is also
translated by the bundled model (a translation costs some 30 times a case's scan and prepare). Prints
every case whose error escaped, reached prepare's catch-all or wrote non-finite values, then the counts per
mutation. Asserts nothing.

    .venv/bin/python benchmarks/fuzz_dicom.py [--cases 10000] [--start 0] [--kinds bytes|fields]
        [--translate-every 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_harness import FIELD_MUTATIONS, MUTATIONS, run_case  # noqa: E402

from petsynth.phantom import make_torso, write_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--kinds", choices=("bytes", "fields"), default="bytes")
    parser.add_argument("--translate-every", type=int, default=10, help="fields: translate every n-th case")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="petsynth_fuzz_"))
    study = write_study(make_torso(40, preset="tiny"), work / "src", fmt="dicom", overwrite=True)
    start = time.perf_counter()
    kinds, problems, translated = Counter(), [], 0
    mutations, model = MUTATIONS, None
    if args.kinds == "fields":
        from petsynth.inference import cached_model

        mutations, model = FIELD_MUTATIONS, cached_model("phantom-cpdm")
    for seed in range(args.start, args.start + args.cases):
        translating = model is not None and (seed - args.start) % args.translate_every == 0
        case = run_case(study, work / "cases", seed, kinds=mutations, translate_model=model if translating else None)
        translated += case.translated
        kinds[case.kind.split()[0]] += 1
        if case.problem:
            problems.append(case)
            print(case, flush=True)
    print(f"{args.cases} cases (seeds {args.start}..{args.start + args.cases - 1}) in "
          f"{time.perf_counter() - start:.0f} s ({translated} CT cases also translated): {len(problems)} problems")
    print("mutations: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
