"""Write every golden file in tests/golden/ from the reference libraries.

Not a test: run it by hand after changing what the golden files hold, then commit the output.
It needs the reference extras (`pip install -e '.[ref]'`) and never touches the network.

    python tools/make_golden.py                 # all parts
    python tools/make_golden.py tokenizer model # only some parts

Each part lives in tools/golden_<part>.py and has `make(out_dir: pathlib.Path) -> None`. Parts
are deterministic (fixed seeds), so re-running them reproduces the committed files up to the
reference libraries' own version differences; each part records those versions in its output.
"""

import argparse
import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup here waits ~24 s to fail

ROOT = Path(__file__).resolve().parent.parent
PARTS = [
    "tokenizer",
    "model",
    "grads",
    "train",
    "generate",
    "controls",  # generation controls on part "generate"'s model
    "hfdirs",
    "keras",  # keras-hub on the torch backend (see tools/golden_keras.py for its environment)
]  # order matters: later parts may reuse earlier output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "parts", nargs="*", metavar="PART", help=f"parts to make, from {PARTS} (default: all)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden", help="output directory")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    sys.path.insert(0, str(ROOT / "tools"))
    sys.path.insert(0, str(ROOT))
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.parts or PARTS:
        print(f"== golden part: {part}")
        importlib.import_module(f"golden_{part}").make(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
