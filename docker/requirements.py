"""Print the requirements of pyproject.toml (core + the given extras), one per line.

Used by docker/Dockerfile to install the dependencies in a layer of their own, before
the source is copied, so a code change does not reinstall torch/vllm.
Usage: python3 requirements.py pyproject.toml [EXTRA[,EXTRA...]]
"""

from __future__ import annotations

import sys

import tomllib


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    reqs = list(project.get("dependencies", []))
    for extra in [e for arg in argv[2:] for e in arg.split(",") if e]:
        if extra not in extras:
            print(f"unknown extra {extra!r}; known: {', '.join(sorted(extras))}", file=sys.stderr)
            return 2
        reqs += extras[extra]
    print("\n".join(dict.fromkeys(reqs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
