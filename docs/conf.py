"""Sphinx configuration of the casbi_store documentation (``make docs``).

Sphinx with MyST-NB: pages are Markdown (MyST), tutorials are MyST notebooks executed on every
build (a cell that raises fails the build), the API reference comes from the docstrings
(autodoc) and the CLI and pipeline-file references from the code (``_ext/casbi_reference.py``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(DOCS / "_ext"), str(ROOT)]

import casbi_store  # noqa: E402

project = "casbi_store"
author = "the CASBI team"
copyright = "2026, the CASBI team"
release = casbi_store.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "casbi_reference",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
html_theme = "furo"
html_title = f"casbi_store {release}"
html_static_path: list[str] = []

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 4

# every tutorial runs on every build, on the tiny preset, in one shared working folder (the
# tutorials build on each other; each makes what it needs if run alone)
# CASBI_DOCS_EXECUTE=off builds the pages without running the tutorials (a quick look at prose)
nb_execution_mode = os.environ.get("CASBI_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 300
nb_merge_streams = True
# stderr is the commands' log lines and progress bars; the tutorials print what they show
nb_output_stderr = "remove"
if "CASBI_TUTORIAL_DIR" not in os.environ:  # a fresh folder per build, removed at its end
    os.environ["CASBI_TUTORIAL_DIR"] = tempfile.mkdtemp(prefix="casbi-tutorial-")
    atexit.register(shutil.rmtree, os.environ["CASBI_TUTORIAL_DIR"], ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")
# the kernels import casbi_store from this checkout, installed or not
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
