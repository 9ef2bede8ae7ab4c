"""Command-line and YAML configuration shared by every command.

A command declares its flags as dataclasses, one per group in `--help` (titled by the first line of the dataclass's
docstring): every field has a `metadata={"help": ...}` and a default, or `metadata={"required": True}`. A stage
module exposes `SECTION` (its YAML section) and `ARGUMENT_TYPES` (its dataclasses), and its `main(argv)` calls

    parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)

`--config FILE.yaml` reads that section of the file as defaults; flags given on the command line override it. A key
of the section that no dataclass declares is an error, so a typo in a config never passes silently. A `dict` field is
a nested mapping in YAML and YAML (or JSON) text on the command line: `--masking "{cloze: {prob: 1.0}}"`.
`config_dataclass(QBert4RecConfig, ...)` turns a config class's keyword arguments into such a dataclass, so a YAML
section builds the config directly.
"""

import argparse
import copy
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import sys
import types
import typing
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "QBERT4REC_DATA_DIR"


def default_data_dir() -> Path:
    """The shared benchmark data: `$QBERT4REC_DATA_DIR`, else `../shared/data` beside the repository."""
    return Path(os.environ.get(DATA_DIR_ENV, REPO_ROOT.parent / "shared" / "data"))


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file into a dict (an empty file gives `{}`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections, got {type(config).__name__}")
    return config


def config_file(argv) -> str | None:
    """The `--config FILE` of `argv` (`None` means `sys.argv[1:]`), or None without one."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    return pre.parse_known_args(argv)[0].config


# ----------------------------------------------------------------------------------------------------------------------
# A config class's keyword arguments as an argument dataclass
# ----------------------------------------------------------------------------------------------------------------------

# One `Args:` entry of a Google-style docstring: "hidden_size (`int`, defaults to 64): width of the encoder."
DOCSTRING_ENTRY = re.compile(r"(\w+) \([^)]*\):\s*(.*)")


def docstring_args(cls) -> dict[str, str]:
    """The `Args:` entries of `cls`'s docstring as `{name: text}`; an entry goes on over the lines indented deeper."""
    entries, name, args_indent, entry_indent = {}, None, None, None
    for line in (inspect.getdoc(cls) or "").splitlines():
        indent = len(line) - len(line.lstrip())
        if args_indent is None:
            args_indent = indent if line.strip() == "Args:" else None
        elif line.strip() and indent <= args_indent:
            break  # the next section
        elif line.strip():
            if entry_indent is None or indent <= entry_indent:
                entry_indent = indent
                match = DOCSTRING_ENTRY.fullmatch(line.strip())
                name = match.group(1) if match else None  # a line such as "a (`int`), b (`int`): ..." is no entry
                if match:
                    entries[name] = match.group(2)
            elif name:
                entries[name] += " " + line.strip()
    return entries


def config_dataclass(config_class, exclude: tuple[str, ...] = (), name: str | None = None) -> type:
    """A dataclass whose fields are `config_class.__init__`'s keyword arguments, less `exclude` and `**kwargs`.

    Each field keeps the signature's type and default and takes its `--help` text from the class docstring's `Args:`
    entry, so a YAML section and flags such as `--hidden_size 128` feed `config_class(**asdict(settings), ...)`
    with nothing restated:

        ModelSettings = config_dataclass(QBert4RecConfig, exclude=("num_items", ...), name="ModelSettings")

    Raises:
        ValueError: `exclude` names no argument, or an argument has no `Args:` entry.
    """
    parameters = list(inspect.signature(config_class.__init__).parameters.values())[1:]  # less `self`
    keywords = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(exclude) - {p.name for p in keywords})
    if unknown:
        raise ValueError(f"exclude names no argument of {config_class.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(config_class.__init__)
    docs = docstring_args(config_class)
    fields = []
    for parameter in keywords:
        if parameter.name in exclude:
            continue
        if parameter.name not in docs:
            raise ValueError(f"{config_class.__name__}'s docstring has no `Args:` entry for {parameter.name}")
        metadata = {"help": docs[parameter.name]}
        if parameter.default is parameter.empty:
            spec = dataclasses.field(metadata={**metadata, "required": True})
        elif isinstance(parameter.default, (dict, list, set)):
            fresh_default = functools.partial(copy.deepcopy, parameter.default)
            spec = dataclasses.field(default_factory=fresh_default, metadata=metadata)
        else:
            spec = dataclasses.field(default=parameter.default, metadata=metadata)
        default_type = type(parameter.default) if parameter.default not in (parameter.empty, None) else str
        fields.append((parameter.name, hints.get(parameter.name, default_type), spec))
    doc = f"{config_class.__name__} arguments (documented in its docstring)"
    return dataclasses.make_dataclass(
        name or f"{config_class.__name__}Arguments", fields, namespace={"__doc__": doc}, kw_only=True
    )


# ----------------------------------------------------------------------------------------------------------------------
# Config sections and command lines
# ----------------------------------------------------------------------------------------------------------------------


def argument_names(*dataclass_types) -> list[str]:
    """The field names of `dataclass_types`, the flags they declare, in order."""
    return [f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init]


def section_values(config: dict, section: str | None, dataclass_types, source="config") -> dict:
    """The settings of `config[section]` (the whole `config` when `section` is None), every key checked.

    Raises:
        ValueError: the section is not a mapping, or one of its keys is no field of `dataclass_types`.
    """
    values = (config.get(section) if section else config) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{source}: section '{section}' must be a mapping, got {type(values).__name__}")
    allowed = argument_names(*dataclass_types)
    unknown = [key for key in values if key not in allowed]
    if unknown:
        named = [key + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(key, allowed, n=1))
                 for key in unknown]  # fmt: skip
        raise ValueError(f"{source}: unknown key(s) in section '{section}': {', '.join(named)}. "
                         f"Allowed: {', '.join(sorted(allowed))}")
    return values


def flag_name(flag: str) -> str:
    """The field a flag names: `--batch-size=8` -> `batch_size`."""
    return flag.split("=", 1)[0].removeprefix("--").replace("-", "_")


def declares(dataclass_types, flag: str) -> bool:
    """Whether `parse_args(..., *dataclass_types)` takes `flag` (`--seed`, `--seed=3`, `--no_cache`, `--batch-size`)."""
    name, fields = flag_name(flag), argument_names(*dataclass_types)
    if name in fields:
        return True
    hints = {field: hint for t in dataclass_types for field, hint in typing.get_type_hints(t).items()}
    return name.startswith("no_") and name[3:] in fields and hints[name[3:]] is bool


def as_flags(settings: dict | None) -> list[str]:
    """Config settings as command-line flags: `{"num_epochs": 40, "fp16": False}` -> `["--num_epochs", "40",
    "--fp16", "false"]`. A list gives one word per element, a mapping its JSON text."""
    flags = []
    for key, value in (settings or {}).items():
        if isinstance(value, bool):
            words = [str(value).lower()]
        elif isinstance(value, (list, tuple)):
            words = [str(v) for v in value]
        elif isinstance(value, dict):
            words = [json.dumps(value)]
        else:
            words = [str(value)]
        flags += [f"--{key}", *words]
    return flags


def str_to_bool(text: str) -> bool:
    """`true`/`yes`/`1` -> True, `false`/`no`/`0` -> False (any case)."""
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def mapping(text: str) -> dict:
    """A mapping from its YAML (or JSON) text: `"{cloze: {prob: 1.0}}"` -> `{"cloze": {"prob": 1.0}}`."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not YAML: {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{key: value}}', got {text!r}")
    return value


def field_argument(hint) -> dict:
    """`add_argument` keywords for a field of type `hint` (`X | None` is read as X)."""
    origin, type_args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in type_args:
        (hint,) = [a for a in type_args if a is not type(None)]
        origin, type_args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"type": str_to_bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    if origin is typing.Literal:
        return {"type": type(type_args[0]), "choices": type_args}
    if hint is list or origin is list:
        item = type_args[0] if type_args else str
        return {"type": item, "nargs": "+", "metavar": item.__name__.upper()}
    if hint is dict or origin is dict:
        return {"type": mapping, "metavar": "YAML"}
    return {"type": hint, "metavar": hint.__name__.upper()}


def format_default(value) -> str:
    """A default as it would be typed: `true`, `256 128`, `{cloze: {prob: 0.4}}`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip()
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their layout (examples stay examples); each flag comes with its default or "(required)"."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required:
            return f"{text} (required)"
        no_default = action.default in (None, "", argparse.SUPPRESS) or not action.option_strings or action.nargs == 0
        if no_default or "(default" in text:  # or the help says itself what the default means
            return text
        return f"{text} (default: {format_default(action.default).replace('%', '%%')})"


def argument_title(dataclass_type) -> str:
    """The `--help` title of a dataclass's flags: the first line of its docstring, else its name."""
    doc = (dataclass_type.__doc__ or "").strip()
    if not doc or doc.startswith(f"{dataclass_type.__name__}("):  # the signature `dataclass` writes when there is none
        return dataclass_type.__name__
    return doc.splitlines()[0].rstrip(".")


def field_default(f: dataclasses.Field):
    """A field's default (a fresh one from its factory), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def is_required(f: dataclasses.Field) -> bool:
    """Whether a field says `metadata={"required": True}` or has no default."""
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return f.metadata.get("required", False) or no_default


def build_parser(
    dataclass_types, section: str | None = None, description: str | None = None, defaults: dict | None = None
) -> argparse.ArgumentParser:
    """An `ArgumentParser` with `--config` and one group of flags per dataclass.

    `defaults` (a config section) replace the fields' defaults; a required field that it sets is no longer required.
    """
    names = argument_names(*dataclass_types)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"flags declared by more than one dataclass: {', '.join(repeated)}")
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        epilog="Booleans: --flag, --flag true|false or --no_flag. With --config, the defaults shown are the file's.",
    )
    where = f"whose '{section}' section gives" if section else "that gives"
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file {where} the defaults of the flags below")
    required_flags = []
    for dataclass_type in dataclass_types:
        group = parser.add_argument_group(argument_title(dataclass_type))
        hints = typing.get_type_hints(dataclass_type)
        for f in dataclasses.fields(dataclass_type):
            if not f.init:
                continue
            required = is_required(f) and defaults.get(f.name) is None
            spellings = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            action = group.add_argument(
                *spellings,
                dest=f.name,
                default=defaults.get(f.name, field_default(f)),
                required=required,
                help=f.metadata.get("help", "").replace("%", "%%"),
                **field_argument(hints[f.name]),
            )
            action.option_strings = spellings[:1]  # listed (and named in errors) once; the parser still takes both
            if hints[f.name] is bool:
                group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS)  # fmt: skip
            if required:
                required_flags.append(f"--{f.name} {action.metavar or f.name.upper()}")
    parser.usage = " ".join(["%(prog)s [-h] [--config FILE]", *required_flags, "[flags]"])
    return parser


def parse_args(argv, *dataclass_types, section: str | None = None, description: str | None = None):
    """Parse `argv` into one instance of each dataclass, with `--config` YAML defaults.

    Args:
        argv: command-line arguments (`None` means `sys.argv[1:]`).
        dataclass_types: the argument dataclasses; a field is required if it says `metadata={"required": True}` (or
            has no default), unless the config section sets it.
        section: the YAML section read for defaults (the whole file when `None`).
        description: the `--help` text above the flags (the module docstring: its examples stay laid out).

    Returns:
        A tuple with one instance per dataclass type.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    path = config_file(argv)
    values = section_values(load_yaml(path), section, dataclass_types, source=path) if path else {}
    parser = build_parser(dataclass_types, section, description, defaults=values)
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        parser.error(f"unrecognised arguments: {' '.join(remaining)}")
    return tuple(
        t(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(t) if f.init}) for t in dataclass_types
    )
