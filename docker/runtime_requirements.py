"""Print the runtime requirements of pyproject.toml, one a line, for `pip install -c`.

The images install what pyproject.toml declares (plus the named extras), constrained to the
versions pinned in requirements.lock, so they get exactly the pins the tests ran with and
none of the development tools. llama-cpp-python is left out with `--without`: the hive image
installs the wheel it built with CUDA, the queen image needs no llama.cpp at all.

    python docker/runtime_requirements.py [--extra NAME]... [--without NAME]...
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else ""


def runtime_requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    skip = {_name(name) for name in without}
    return [req for req in wanted if _name(req) not in skip]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--without", action="append", default=[])
    args = parser.parse_args()
    for requirement in runtime_requirements(args.pyproject, args.extra, args.without):
        print(requirement)


if __name__ == "__main__":
    main()
