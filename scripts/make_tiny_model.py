"""Write the tiny random-weight llama GGUF test model.

Usage: python scripts/make_tiny_model.py OUT.gguf [--seed N]

See tests/tinymodel.py for the design of the model.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.tinymodel import write_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny rbee test GGUF model.")
    parser.add_argument("out", type=pathlib.Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    out: pathlib.Path = args.out
    if out.parent != pathlib.Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_model(out, seed=args.seed)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
