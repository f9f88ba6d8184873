"""Reference pages generated from the code, so that they cannot drift from it.

``cli_reference()`` walks the parser of ``casbi-store`` (``casbi_store.cli.build_parser``),
``pipeline_reference()`` the dataclasses that ``casbi_store.cli.config.load_pipeline`` builds a
pipeline file into, and ``api_reference()`` lists the public API (``casbi_store.__all__``) and the
stage packages for autodoc. As a Sphinx extension, ``setup`` writes them to
``docs/reference/{cli,pipeline}.md`` and ``docs/reference/api.rst`` before the sources are read
(the files are not in git). ``tests/test_docs.py`` checks what they cover.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import io
import pkgutil
import re
import tokenize
import typing
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "reference"

# the order the data flows (README "Layout"); each package's modules go on its API page
STAGES = ("mock", "store", "surrogate", "compose", "learn", "apply", "evaluation", "plots")


# ---- the command line ------------------------------------------------------------------------

def _cell(text: object) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(text: str | None, values: dict) -> str:
    """An argparse help string as ``--help`` prints it (``%(default)s`` filled, ``%%`` -> ``%``)."""
    try:
        return (text or "") % values
    except (KeyError, TypeError, ValueError):
        return text or ""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: _help(a.help, {}) for a in action._choices_actions}
            return [(name, helps.get(name, ""), p) for name, p in action.choices.items()]
    return []


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.nargs in ("*", "+") or isinstance(action.nargs, int) and action.nargs > 1:
            names += f" {action.metavar or action.dest.upper()} …"
        default = action.default
        shown = "" if default in (None, argparse.SUPPRESS, False) or isinstance(
            action, argparse._VersionAction) else f"`{default}`"
        text = _help(action.help, vars(action))
        if action.choices and not all(str(c) in text for c in action.choices):
            text += f" (one of: {', '.join(f'`{c}`' for c in action.choices)})"
        if action.required and action.option_strings:
            text += " **required**"
        rows.append(f"| {_cell(names)} | {_cell(shown)} | {_cell(text)} |")
    return rows


def _command_section(prog: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    anchor = prog.replace(" ", "-")
    lines = [f"({anchor})=", f"{'#' * level} `{prog}`", ""]
    if summary:
        lines += [_cell(summary), ""]
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines += ["```text", usage, "```", ""]
    if parser.description and parser.description != summary:
        lines += [_cell(parser.description), ""]
    rows = _option_rows(parser)
    if rows:
        lines += ["| argument | default | what it does |", "|---|---|---|", *rows, ""]
    for name, helptext, sub in _subcommands(parser):
        lines += _command_section(f"{prog} {name}", helptext, sub, min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """Every command and option of ``casbi-store``, from its argparse parsers."""
    from casbi_store.cli import build_parser

    parser = build_parser()
    lines = ["# Command line (`casbi-store`)", "",
             "Generated from the parsers (`casbi_store.cli.build_parser`) when the docs are built. "
             "Every command prints the same with `--help`. A command given bad input prints one "
             "line, `casbi-store: error: ...`, and exits with status 2.", ""]
    lines += ["| command | what it does |", "|---|---|"]
    lines += [f"| [`{n}`](casbi-store-{n}) | {_cell(h)} |" for n, h, _ in _subcommands(parser)]
    lines += [""]
    lines += _command_section("casbi-store", parser.description or "", parser, 2)
    return "\n".join(lines) + "\n"


# ---- the pipeline file -----------------------------------------------------------------------

def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` at the end of each field's line in the class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    last_name = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and last_name is None:
            last_name = (tok.string, tok.start[0])
        elif tok.type == tokenize.COMMENT and last_name and tok.start[0] == last_name[1]:
            comments[last_name[0]] = tok.string.lstrip("# ").strip()
        if tok.type == tokenize.NEWLINE:
            last_name = None
    return comments


def _type_name(tp: object) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    return re.sub(r"\b(typing|collections\.abc|casbi_store(\.\w+)*)\.", "", str(text))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "**required**"


def _option_helps(command: str | None) -> dict[str, str]:
    """``--some-option`` help strings of a ``casbi-store`` (sub)command, by field name."""
    if not command:
        return {}
    from casbi_store.cli import build_parser

    parser = build_parser()
    for word in command.split():
        parser = dict((n, p) for n, _, p in _subcommands(parser))[word]
    return {o[2:].replace("-", "_"): _help(a.help, vars(a)) for a in parser._actions
            for o in a.option_strings if o.startswith("--") and a.help}


def _dataclass_table(cls: type, skip: tuple[str, ...] = (), command: str | None = None) -> list[str]:
    """A table of the dataclass's fields: type, default and meaning (the comment on the field's
    line, else the help of the command's option of the same name)."""
    comments = {**_option_helps(command), **_field_comments(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - annotations naming types only imported for checking
        hints = {}
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _type_name(hints.get(f.name, f.type))
        meaning = comments.get(f.name, "")
        rows.append(f"| `{f.name}` | {_cell(tp)} | {_cell(_default(f))} | {_cell(meaning)} |")
    doc = inspect.getdoc(cls) or ""
    own_doc = "" if doc.startswith(f"{cls.__name__}(") else _cell(doc)
    return ([own_doc, ""] if own_doc else []) + rows + [""]


def pipeline_sections() -> list[tuple[str, str, list[tuple[str, type, tuple[str, ...]]]]]:
    """(top-level key, what it is, [(heading, dataclass, fields left out, the command whose
    options' help describes fields without a comment)]) in a run's order."""
    from casbi_store.cli import config as C
    from casbi_store.compose.sources.observation import ObservationSpec
    from casbi_store.compose.spec import ComposeSpec
    from casbi_store.learn.trainer import TrainConfig
    from casbi_store.mock import Physics
    from casbi_store.store.binning import BinningSpec
    from casbi_store.store.cluster import ClusterSpec
    from casbi_store.surrogate.model import SurrogateConfig

    return [
        ("mock", "write a mock NIHAO suite (`casbi-store mock`)",
         [("mock", C.MockStage, (), "mock"), ("mock.physics", Physics, (), "mock")]),
        ("extract", "extract a suite into the store (`casbi-store extract`)",
         [("extract", C.ExtractStage, (), "extract"), ("extract.binning", BinningSpec, (), "extract")]),
        ("cluster", "the Dask cluster that extract and compose run on",
         [("cluster", ClusterSpec, (), None)]),
        ("surrogate", "train and validate the surrogate simulator (`casbi-store surrogate`)",
         [("surrogate", C.SurrogateStage, (), "surrogate validate"),
          ("surrogate.options", SurrogateConfig, (), "surrogate train")]),
        ("compose", "training sets (`casbi-store compose`); `sets` is a list of specs",
         [("compose", C.ComposeStage, (), "compose"), ("compose.sets[]", ComposeSpec, (), None),
          ("compose.sets[].observation", ObservationSpec, (), None)]),
        ("tune", "optuna studies (`casbi-store tune`): `defaults` (training options) and "
         "`studies`, each a model item with `trials` and `search`",
         [("tune.studies[]", C.Study, ("model",), "tune")]),
        ("train", "models (`casbi-store train`): `defaults` (training options for every model) "
         "and `models`, each `task`, `set` (NAME:VERSION), `out`, optional `tuned` and any "
         "training option below",
         [("train.models[]", C.ModelSpec, ("version", "config"), "train"),
          ("training options (train.defaults, train.models[], tune.defaults)", TrainConfig, (), "train")]),
        ("survey", "mock survey tables through observe and infer (`casbi-store survey`)",
         [("survey", C.SurveyStage, (), "survey")]),
        ("external", "an external condition: a second mock suite extracted with the store's "
         "bin edges and a set of its halos, judged by `evaluate` as galaxies no model saw",
         [("external", C.ExternalStage, ("mock", "set"), None),
          ("external.mock", C.MockStage, (), "mock"), ("external.set", ComposeSpec, (), None)]),
        ("evaluate", "metrics and the report (`casbi-store evaluate`)",
         [("evaluate", C.EvaluateStage, (), "evaluate")]),
    ]


def pipeline_reference() -> str:
    """Every key of a pipeline file, from the dataclasses ``load_pipeline`` builds."""
    from casbi_store.cli import config as C

    lines = ["# Pipeline file (`casbi-store run FILE`)", "",
             "Generated from the classes that `casbi_store.cli.config.load_pipeline` builds a "
             "pipeline file into, when the docs are built. A file is validated whole before "
             "anything runs; an unknown key is an error that names the file and the key. "
             "Relative paths are inside `workdir` (default: the current folder). Stages run in "
             "the order of this page, whatever the order in the file.", "",
             "```{literalinclude} ../../pipelines/tiny.yaml", ":language: yaml",
             ":caption: pipelines/tiny.yaml, the seconds-long pipeline the tutorials and tests run",
             "```", "",
             "| top-level key | what it is |", "|---|---|",
             "| `workdir` | the folder relative paths are in (`~` and `$VARS` expanded) |"]
    sections = pipeline_sections()
    lines += [f"| [`{key}`]({key}-stage) | {_cell(what)} |" for key, what, _ in sections]
    lines += [""]
    for key, what, tables in sections:
        lines += [f"({key}-stage)=", f"## `{key}:`", "", _cell(what[0].upper() + what[1:]) + ".", ""]
        for heading, cls, skip, command in tables:
            lines += [f"### `{heading}`", "", f"(`{cls.__module__}.{cls.__qualname__}`)", ""]
            lines += _dataclass_table(cls, skip, command)
    documented = {k for k, _, _ in sections} | {"workdir", "source"}
    assert documented >= {f.name for f in dataclasses.fields(C.Pipeline)}, "a stage left out"
    return "\n".join(lines) + "\n"


# ---- the API ---------------------------------------------------------------------------------

def stage_modules(stage: str) -> list[str]:
    """The modules of a stage package (sub-packages included), sorted."""
    package = importlib.import_module(f"casbi_store.{stage}")
    names = [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return sorted(n for n in names if not n.rsplit(".", 1)[-1].startswith("_"))


def api_reference() -> str:
    """autodoc directives: ``casbi_store.__all__`` (lazy names resolved by autodoc's getattr),
    then each stage package and its modules."""
    import casbi_store

    lines = ["API reference", "=============", "",
             "Generated from the docstrings when the docs are built. ``import casbi_store`` is "
             "cheap: the names below load their stage (and torch) on first use.", "",
             "The public API (``casbi_store.__all__``)", "----------------------------------------", ""]
    for name in casbi_store.__all__:
        if name.startswith("__"):
            continue
        # lazy names live in their stage; the error family in the package itself
        module, attribute = casbi_store._API.get(name, ("casbi_store", name))
        obj = getattr(importlib.import_module(module), attribute)
        kind = "autoclass" if inspect.isclass(obj) else "autofunction"
        # documented where it lives (its full entry is in its stage below): ``casbi_store.compose``
        # is also the name of a stage package, so autodoc could not resolve it on casbi_store
        lines += [f"``casbi_store.{name}`` is :py:obj:`{module}.{attribute}`:", "",
                  f".. {kind}:: {module}.{attribute}", "   :no-index:", ""]
    for stage in STAGES:
        title = f"``casbi_store.{stage}``"
        # the package's docstring by hand: autodoc would take ``casbi_store.compose`` for the
        # public function of that name
        doc = inspect.getdoc(importlib.import_module(f"casbi_store.{stage}")) or ""
        lines += [title, "-" * len(title), "", f".. py:module:: casbi_store.{stage}", "",
                  *doc.splitlines(), ""]
        for module in stage_modules(stage):
            # a sub-package's members are documented in its modules (no second entry)
            members = "   :no-members:" if hasattr(importlib.import_module(module), "__path__") \
                else "   :members:"
            lines += [f".. automodule:: {module}", members, ""]
    return "\n".join(lines) + "\n"


def write_references(out: Path = REFERENCE) -> list[Path]:
    """Write the three generated pages (only those whose text changed, so that Sphinx re-reads
    only what changed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("cli.md", cli_reference()), ("pipeline.md", pipeline_reference()),
                       ("api.rst", api_reference())):
        path = out / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def setup(app) -> dict:
    app.connect("builder-inited", lambda app: write_references())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
