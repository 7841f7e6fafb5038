"""Write the versions of the packages the image really got (pip resolved most from lower
bounds) as JSON: `python3 record_versions.py /opt/versions.json`. Absent packages are left
out (JOB_DEPS=cpu has no vllm, minimal no torch)."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import sys

PACKAGES = ("mtbench-job", "torch", "transformers", "tokenizers", "accelerate", "vllm")


def installed() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


if __name__ == "__main__":
    text = json.dumps(installed(), indent=1) + "\n"
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write(text)
