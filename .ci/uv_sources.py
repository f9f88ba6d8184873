"""The options that make ``uv pip install`` use the package sources and constraints pip is
configured with here (``pip config list``: find-links, index-url, extra-index-url, constraint,
from any of pip's files or PIP_* variables), printed one per line for the Makefile and
tests/test_packaging.py; uv reads none of pip's configuration itself.

``--index-strategy unsafe-best-match``: like pip, the best version among all the indexes, not the
first index that has the package (uv's default)."""

from __future__ import annotations

import ast
import subprocess
import sys

OPTIONS = {"find-links": "--find-links", "index-url": "--index-url",
           "extra-index-url": "--extra-index-url", "constraint": "--constraint"}


def uv_options(python: str = sys.executable) -> list[str]:
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                            text=True).stdout
    out = ["--index-strategy", "unsafe-best-match"]
    for line in listed.splitlines():  # e.g. global.find-links='/opt/wheels'
        key, _, value = line.partition("=")
        option = OPTIONS.get(key.rsplit(".", 1)[-1])
        if option and value:
            for item in ast.literal_eval(value).split():
                if item not in out:
                    out += [option, item]
    return out


if __name__ == "__main__":
    print("\n".join(uv_options()))
