"""Command lines and YAML sections: `parse_args`, its `--help`, `config_dataclass` and mapping-valued flags."""

import dataclasses
import inspect
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from configuration_qbert4rec import QBert4RecConfig
from training.config import as_flags, config_dataclass, declares, docstring_args, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_EXCLUDE = ("num_items", "num_codebooks", "codebook_size", "item_table_fingerprint", "pad_token_id",
                 "mask_token_id", "unk_token_id", "sep_token_id", "num_special_tokens", "is_causal")  # fmt: skip


@dataclass
class DataArgs:
    """Data: where the prepared dataset is"""

    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder", "required": True})
    max_users: int = field(default=None, metadata={"help": "keep the first N users"})


@dataclass
class TrainArgs:
    """Training"""

    num_epochs: int = field(default=10, metadata={"help": "epochs"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak rate, 100% at the end of warm-up"})
    group_by_length: bool = field(default=True, metadata={"help": "batch similar lengths"})
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 128], metadata={"help": "encoder widths"})
    masking: dict = field(
        default_factory=lambda: {"cloze": {"prob": 0.4, "ratio": 0.2}}, metadata={"help": "strategy -> settings"}
    )


DESCRIPTION = """Train something.

    python train.py --dataset_dir DATA --num_epochs 3
    python train.py --config configs/x.yaml

Details after the examples.
"""


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    """`--help` lines wrap at $COLUMNS: wide enough that no entry wraps in the middle of a word."""
    monkeypatch.setenv("COLUMNS", "200")


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------------------------------------------------
# parse_args
# ----------------------------------------------------------------------------------------------------------------------


def test_defaults_config_section_and_flags_in_that_order_of_precedence(tmp_path):
    config = write_config(tmp_path, "train:\n  num_epochs: 3\n  learning_rate: 0.002\nother:\n  num_epochs: 99\n")
    data, train = parse_args(["--dataset_dir", "D"], DataArgs, TrainArgs, section="train")
    assert (data.dataset_dir, data.max_users, train.num_epochs, train.hidden_sizes) == ("D", None, 10, [256, 128])
    data, train = parse_args(["--config", config, "--dataset_dir", "D", "--num_epochs", "5"], DataArgs, TrainArgs,
                             section="train")  # fmt: skip
    assert (train.num_epochs, train.learning_rate) == (5, 0.002)


def test_kebab_case_spelling_and_every_boolean_form_are_accepted():
    def parsed(*flags):
        return parse_args(["--dataset_dir", "D", *flags], DataArgs, TrainArgs)[1]

    assert parsed("--num-epochs", "4").num_epochs == 4
    assert parsed().group_by_length is True
    assert parsed("--group_by_length", "false").group_by_length is False
    assert parsed("--no_group_by_length").group_by_length is False
    assert parsed("--no_group_by_length", "--group_by_length").group_by_length is True
    assert parsed("--hidden_sizes", "64", "32").hidden_sizes == [64, 32]


def test_unknown_key_in_the_section_is_refused_with_the_close_match(tmp_path):
    config = write_config(tmp_path, "train:\n  num_epoch: 3\n")
    message = r"unknown key\(s\) in section 'train': num_epoch \(did you mean num_epochs\?\)\. Allowed: "
    with pytest.raises(ValueError, match=message):
        parse_args(["--config", config, "--dataset_dir", "D"], DataArgs, TrainArgs, section="train")


def test_unknown_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--dataset_dir", "D", "--num_epoch", "3"], DataArgs, TrainArgs)
    assert exit_info.value.code == 2 and "unrecognised arguments: --num_epoch 3" in capsys.readouterr().err


def test_a_required_flag_is_required_unless_the_section_sets_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([], DataArgs, TrainArgs, section="train")
    assert exit_info.value.code == 2
    assert "the following arguments are required: --dataset_dir\n" in capsys.readouterr().err
    config = write_config(tmp_path, "train:\n  dataset_dir: from/config\n")
    assert parse_args(["--config", config], DataArgs, TrainArgs, section="train")[0].dataset_dir == "from/config"


def test_mapping_field_from_yaml_or_json_text_and_from_a_nested_section(tmp_path, capsys):
    def masking(argv):
        return parse_args(["--dataset_dir", "D", *argv], DataArgs, TrainArgs, section="train")[1].masking

    assert masking(["--masking", "{cloze: {prob: 1.0, ratio: 0.5}}"]) == {"cloze": {"prob": 1.0, "ratio": 0.5}}
    assert masking(["--masking", '{"tail": {"prob": 1}}']) == {"tail": {"prob": 1}}
    config = write_config(tmp_path, "train:\n  masking:\n    span: {prob: 0.5, ratio: 0.4}\n    tail: {prob: 0.5}\n")
    assert masking(["--config", config]) == {"span": {"prob": 0.5, "ratio": 0.4}, "tail": {"prob": 0.5}}
    assert masking(["--config", config, "--masking", "{cloze: {prob: 1.0}}"]) == {"cloze": {"prob": 1.0}}
    with pytest.raises(SystemExit):
        masking(["--masking", "cloze"])
    assert "expected a mapping" in capsys.readouterr().err


def test_as_flags_gives_back_what_the_section_says(tmp_path):
    section = {"num_epochs": 3, "group_by_length": False, "hidden_sizes": [64, 32],
               "masking": {"cloze": {"prob": 1.0, "ratio": 0.5}}, "learning_rate": 0.002}  # fmt: skip
    assert as_flags(None) == []
    _, train = parse_args(["--dataset_dir", "D", *as_flags(section)], DataArgs, TrainArgs)
    assert {key: getattr(train, key) for key in section} == section


def test_declares_knows_every_spelling():
    flags = ("--num_epochs", "--num-epochs=3", "--no_group_by_length")
    assert all(declares((DataArgs, TrainArgs), flag) for flag in flags)
    assert not any(declares((DataArgs, TrainArgs), flag) for flag in ("--seed", "--no_num_epochs", "--no_dataset_dir"))


# ----------------------------------------------------------------------------------------------------------------------
# --help
# ----------------------------------------------------------------------------------------------------------------------


def listed_flags(help_text: str) -> list[str]:
    """The flags at the start of the option lines of `--help` (`  --seed INT   random seed` -> `--seed`)."""
    return re.findall(r"^  (-{1,2}[\w-]+)", help_text, re.M)


def option_entries(help_text: str) -> dict[str, str]:
    """`{flag: its whole entry}` for every option line and the indented lines under it."""
    entries, flag = {}, None
    for line in help_text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            flag = match.group(1)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def test_help_lists_each_flag_once_in_groups_with_defaults_and_keeps_the_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"], DataArgs, TrainArgs, section="train", description=DESCRIPTION)
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    flags = listed_flags(text)
    expected = ["-h", "--config"] + [f"--{f.name}" for t in (DataArgs, TrainArgs) for f in dataclasses.fields(t)]
    assert flags == expected  # each once, snake_case only (no --num-epochs, no --no_group_by_length)
    assert "\n    python train.py --dataset_dir DATA --num_epochs 3\n    python train.py --config" in text
    data_group, train_group = "Data: where the prepared dataset is:\n  --dataset_dir STR", "Training:\n  --num_epochs"
    assert text.index(data_group) < text.index(train_group)
    entries = option_entries(text)
    assert "(required)" in entries["--dataset_dir"] and "default" not in entries["--dataset_dir"]
    assert "default" not in entries["--max_users"]  # None: no default to show
    assert entries["--num_epochs"].endswith("(default: 10)")
    assert entries["--learning_rate"].endswith("peak rate, 100% at the end of warm-up (default: 0.001)")
    assert entries["--group_by_length"].endswith("(default: true)")
    assert entries["--hidden_sizes"].endswith("(default: 256 128)")
    assert entries["--masking"].endswith("(default: {cloze: {prob: 0.4, ratio: 0.2}})")
    assert all(entry.count("default") <= 1 for entry in entries.values())
    assert re.search(r"usage: \S+ \[-h\] \[--config FILE\] --dataset_dir STR \[flags\]", text)


def test_help_shows_the_config_values_as_defaults(tmp_path, capsys):
    config = write_config(tmp_path, "train:\n  num_epochs: 3\n  dataset_dir: D\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", config, "--help"], DataArgs, TrainArgs, section="train")
    entries = option_entries(capsys.readouterr().out)
    assert entries["--num_epochs"].endswith("(default: 3)") and entries["--dataset_dir"].endswith("(default: D)")


def commands() -> list[str]:
    """Every script of training/ and benchmarks/ that runs as a command."""
    scripts = sorted([*(REPO_ROOT / "training").glob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.py")])
    return [str(p.relative_to(REPO_ROOT)) for p in scripts if 'if __name__ == "__main__":' in p.read_text()]


def test_every_command_is_found():
    assert {"training/pipeline.py", "training/pretrain.py", "benchmarks/recbole_baselines.py"} <= set(commands())


@pytest.mark.parametrize("command", commands())
def test_help_of_every_command(command):
    """Exit 0; each flag listed once, in snake_case, with at most one default; required flags marked; the module
    docstring's example commands laid out on their own lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    result = subprocess.run([sys.executable, command, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    flags = listed_flags(text)
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    assert not [f for f in flags if "-" in f.lstrip("-")], "kebab-case spellings are accepted, not listed"
    entries = option_entries(text)
    assert all(entry.count("(default:") <= 1 for entry in entries.values())
    usage = text.split("\n\n", 1)[0]
    required = re.findall(r" (--\w+) [A-Z{]", usage.replace("[--config FILE]", ""))
    assert sorted(required) == sorted(f for f, entry in entries.items() if entry.endswith("(required)"))
    example = re.search(r"^ {4}(?:python|accelerate launch|nohup python) \S+\.py", text, re.M)
    assert example, "the docstring's example commands are laid out as examples"


def test_stage_commands_mark_their_dataclasses_required_flags():
    """The flags a stage cannot run without are marked required in its dataclasses."""
    from training import evaluate, explain_codes, export, extract_features, inject, quantize

    required = {
        module.__name__: sorted(
            f.name for t in module.ARGUMENT_TYPES for f in dataclasses.fields(t) if f.metadata.get("required")
        )
        for module in (evaluate, explain_codes, export, extract_features, inject, quantize)
    }
    assert required == {
        "training.evaluate": ["dataset_dir", "model_dir"],
        "training.explain_codes": ["dataset_dir", "tokenizer_dir"],
        "training.export": ["model_dir"],
        "training.extract_features": ["dataset_dir"],
        "training.inject": ["dataset_dir", "output_dir"],
        "training.quantize": ["dataset_dir", "embeddings", "output_dir"],
    }


# ----------------------------------------------------------------------------------------------------------------------
# config_dataclass
# ----------------------------------------------------------------------------------------------------------------------


class TinyConfig:
    r"""A config to read.

    Args:
        width (`int`, defaults to 8): width of the layer.
        act (`str`, defaults to `"gelu"`): activation, one of
            `"gelu"` or `"relu"`.
        a (`int`), b (`int`): a line that is no entry.
        table (`dict`, *optional*): item -> codes.
        flag (`bool`, defaults to `False`): a switch.

    Returns:
        nothing to read here.
    """

    def __init__(self, width: int = 8, act: str = "gelu", table: dict | None = None, flag: bool = False, **kwargs):
        self.width, self.act, self.table, self.flag = width, act, table, flag


def test_docstring_args_reads_each_entry_with_its_continuation_lines():
    assert docstring_args(TinyConfig) == {
        "width": "width of the layer.",
        "act": 'activation, one of `"gelu"` or `"relu"`.',
        "table": "item -> codes.",
        "flag": "a switch.",
    }


def test_config_dataclass_fields_are_the_keyword_arguments_less_the_excluded_ones():
    Settings = config_dataclass(TinyConfig, exclude=("table",), name="Settings")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert Settings.__name__ == "Settings" and list(fields) == ["width", "act", "flag"]  # no **kwargs
    width = fields["width"]
    assert (width.type, width.default, width.metadata["help"]) == (int, 8, "width of the layer.")
    (settings,) = parse_args(["--width", "16", "--flag"], Settings)
    assert asdict(settings) == {"width": 16, "act": "gelu", "flag": True}
    assert TinyConfig(**asdict(settings)).width == 16


def test_config_dataclass_refuses_an_undocumented_argument_or_an_unknown_exclusion():
    class Undocumented(TinyConfig):
        """Width only.

        Args:
            width (`int`): width.
        """

    with pytest.raises(ValueError, match="no `Args:` entry for act"):
        config_dataclass(Undocumented, exclude=("table",))
    with pytest.raises(ValueError, match="exclude names no argument of TinyConfig: hidden"):
        config_dataclass(TinyConfig, exclude=("hidden",))


def test_qbert4rec_settings_from_yaml_and_flags_build_the_config(tmp_path):
    ModelSettings = config_dataclass(QBert4RecConfig, exclude=MODEL_EXCLUDE, name="ModelSettings")
    signature = inspect.signature(QBert4RecConfig.__init__).parameters
    docs = docstring_args(QBert4RecConfig)
    for f in dataclasses.fields(ModelSettings):
        assert f.name not in MODEL_EXCLUDE and f.default == signature[f.name].default
        assert f.metadata["help"] == docs[f.name] and f.metadata["help"]
    expected = {name for name, p in signature.items() if p.kind == p.POSITIONAL_OR_KEYWORD} - {"self", *MODEL_EXCLUDE}
    assert {f.name for f in dataclasses.fields(ModelSettings)} == expected
    config = write_config(tmp_path, "pretrain:\n  hidden_size: 32\n  num_attention_heads: 4\n  loss_type: items\n")
    (settings,) = parse_args(["--config", config, "--hidden_size", "128", "--seen_item_bias"], ModelSettings,
                             section="pretrain")  # fmt: skip
    model_config = QBert4RecConfig(**asdict(settings), num_items=7)
    assert (model_config.hidden_size, model_config.num_attention_heads, model_config.loss_type) == (128, 4, "items")
    assert model_config.seen_item_bias is True and model_config.num_items == 7
    with pytest.raises(SystemExit):
        parse_args(["--num_items", "3"], ModelSettings)  # excluded: set by the code, not by the user

