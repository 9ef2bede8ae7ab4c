"""Command-line and YAML configuration shared by every training script.

Each script declares its arguments as dataclasses (every field with a default and a `metadata={"help": ...}`)
and calls `parse_args(argv, Args, section="pretrain")`. `--config FILE.yaml` reads that section of the file as
defaults; explicit command-line flags override it. Unknown keys in the section are an error, so a typo in a config
never passes silently.
"""

import argparse
import dataclasses
import os
from pathlib import Path

import yaml
from transformers import HfArgumentParser

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
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    return pre.parse_known_args(argv)[0].config


def as_flags(settings: dict | None) -> list[str]:
    """Config settings as command-line flags: `{"num_epochs": 40, "fp16": False}` -> `["--num_epochs", "40", "--fp16", "false"]`."""
    return [x for key, value in (settings or {}).items() for x in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]


def parse_args(argv, *dataclass_types, section: str | None = None, description: str | None = None):
    """Parse `argv` into one instance of each dataclass, with `--config` YAML defaults.

    Args:
        argv: command-line arguments (`None` means `sys.argv[1:]`).
        dataclass_types: the argument dataclasses, every field with a default.
        section: the YAML section read for defaults (the whole file when `None`).

    Returns:
        A tuple with one instance per dataclass type.
    """
    path = config_file(argv)
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.add_argument("--config", default=None, help="YAML config file; its section gives defaults that flags override")
    if path:
        config = load_yaml(path)
        values = config.get(section, {}) if section else config
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section '{section}' must be a mapping")
        allowed = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) in section '{section}': {', '.join(unknown)}. "
                f"Allowed: {', '.join(sorted(allowed))}"
            )
        parser.set_defaults(**values)
    *outputs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognised arguments: {' '.join(remaining)}")
    # The last output is the namespace holding `--config`, which is not a dataclass.
    return tuple(o for o in outputs if dataclasses.is_dataclass(o))
