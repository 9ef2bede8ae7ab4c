"""Stage 3 training scripts on a tiny generated dataset: pretrain -> finetune -> evaluate, resume, bad input."""

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModel, AutoTokenizer

from tokenization_semantic_id import SemanticIdTokenizer
from training import evaluate, finetune, pretrain
from training.config import as_flags, parse_args
from training.loop import make_accelerator, train
from training.masking import DEFAULT_MASKING, HistoryCollator, MultiMaskCollator, check_masking
from training.pipeline import SECTION_TYPES, check_config
from training.quantizers import codebook_sum
from training.prepared import check_sequences, load_sequences
from training.evaluate import eval_loader
from training.sequences import encode_split

REPO_ROOT = Path(__file__).resolve().parents[1]

NUM_ITEMS = 40


def write_leave_one_out(data_dir, users, sequences):
    """Save `sequences` (item id lists, oldest first) as `data_dir/sequences`, split leave-one-out."""
    DatasetDict(
        train=Dataset.from_dict({"user_id": users, "item_ids": [s[:-2] for s in sequences]}),
        validation=Dataset.from_dict({"user_id": users, "item_ids": [s[:-2] for s in sequences], "target": [s[-2] for s in sequences]}),
        test=Dataset.from_dict({"user_id": users, "item_ids": [s[:-1] for s in sequences], "target": [s[-1] for s in sequences]}),
    ).save_to_disk(str(data_dir / "sequences"))


def write_tiny_dataset(root, num_users=120, seed=0):
    """Users walk forward through a ring of items, so the next item is learnable; leave-one-out splits."""
    rng = random.Random(seed)
    items = [f"I{i:03d}" for i in range(NUM_ITEMS)]
    sequences = []
    for _ in range(num_users):
        start, length = rng.randrange(NUM_ITEMS), rng.randint(4, 10)
        sequences.append([items[(start + k) % NUM_ITEMS] for k in range(length)])
    write_leave_one_out(root / "data", [f"u{u}" for u in range(num_users)], sequences)
    codes = [[i % 8, i // 8, 0] for i in range(NUM_ITEMS)]
    SemanticIdTokenizer.from_codes(items, codes, codebook_size=8).save_pretrained(root / "sid")
    return root / "data", root / "sid"


TINY_MODEL = ["--hidden_size", "16", "--num_attention_heads", "2", "--intermediate_size", "32", "--max_position_embeddings", "8"]
TINY_LOOP = ["--batch_size", "32", "--report_to", "none", "--learning_rate", "0.005"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data, sid = write_tiny_dataset(root)
    pretrain.main(["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), "--output_dir", str(root / "pre"),
                   "--num_epochs", "2", *TINY_MODEL, *TINY_LOOP])
    metrics = finetune.main(["--pretrained_dir", str(root / "pre" / "final"), "--dataset_dir", str(data),
                             "--output_dir", str(root / "ft"), "--num_epochs", "15", *TINY_LOOP, "--learning_rate", "0.01"])
    return root, data, sid, metrics


def test_pretrain_finetune_evaluate_end_to_end(tiny):
    root, data, _, metrics = tiny
    saved = json.loads((root / "ft" / "metrics.json").read_text())
    assert saved["num_users"] == 120 and saved["num_items"] == NUM_ITEMS and saved["split"] == "test"
    # A learnable ring: far better than the 10/40 = 0.25 recall@10 of a random ranking.
    assert metrics["recall@10"] > 0.5
    # The final folder loads through the Auto classes and recommends.
    model = AutoModel.from_pretrained(root / "ft" / "final", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(root / "ft" / "final", trust_remote_code=True)
    model.check_tokenizer(tok)
    out = model.recommend(**tok([["I001", "I002"]], return_tensors="pt"), top_k=3)
    assert out.item_indices.shape == (1, 3)
    # evaluate.py on the saved folder reproduces the fine-tuning's test metrics.
    again = evaluate.main(["--model_dir", str(root / "ft" / "final"), "--dataset_dir", str(data),
                           "--output_file", str(root / "eval.json")])
    assert again["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-6)


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny, tmp_path):
    root, data, sid, _ = tiny
    common = ["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), *TINY_MODEL, *TINY_LOOP, "--patience", "10"]
    pretrain.main([*common, "--output_dir", str(tmp_path / "full"), "--num_epochs", "3"])
    # A second identical run, then "killed" after epoch 1: its later checkpoint is removed and it resumes.
    # (tests/test_pipeline.py kills a real process with SIGKILL mid-epoch.)
    pretrain.main([*common, "--output_dir", str(tmp_path / "cut"), "--num_epochs", "3"])
    history = json.loads((tmp_path / "full" / "training_history.json").read_text())
    checkpoints = sorted((tmp_path / "cut" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["epoch_1", "epoch_2"]
    shutil.rmtree(checkpoints[-1])
    pretrain.main([*common, "--output_dir", str(tmp_path / "cut"), "--num_epochs", "3", "--resume_from_checkpoint", "latest"])
    resumed = json.loads((tmp_path / "cut" / "training_history.json").read_text())
    assert resumed["history"] == history["history"]


def test_training_leaves_no_cache_files_in_the_prepared_dataset(tiny):
    _, data, _, _ = tiny  # pretrained and fine-tuned on `data` by the fixture
    assert not sorted(p.name for p in data.rglob("cache-*.arrow"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path):
    root, data, sid, _ = tiny
    tokenizer = SemanticIdTokenizer.from_pretrained(sid)
    (model_args, args, loop_args) = parse_args(
        ["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), "--output_dir", str(tmp_path), "--num_epochs", "3",
         *TINY_MODEL, *TINY_LOOP],
        *pretrain.ARGUMENT_TYPES,
    )
    model = pretrain.build_model(model_args, tokenizer)
    calls = {"n": 0}
    forward = model.forward

    def forward_nan_in_second_epoch(*a, **k):  # fault injection: the loss turns NaN after the first epoch
        out = forward(*a, **k)
        calls["n"] += 1
        if calls["n"] > 4:
            out.loss = out.loss * float("nan")
        return out

    model.forward = forward_nan_in_second_epoch
    accelerator = make_accelerator(loop_args, "nan-test")
    train_set = encode_split(load_sequences(data)["train"], tokenizer).select_columns(["item_indices"])
    collator = MultiMaskCollator(num_items=tokenizer.num_items, max_len=8)
    validation = encode_split(load_sequences(data)["validation"], tokenizer)
    loader = eval_loader(validation, HistoryCollator(num_items=tokenizer.num_items, max_len=8), loop_args)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 1.*last good checkpoint is .*epoch_0"):
        train(model, tokenizer, train_set, collator, loader, loop_args, accelerator)
    assert (tmp_path / "checkpoints" / "epoch_0").is_dir()
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_config_with_unknown_key_is_refused(tiny, tmp_path):
    _, data, sid, _ = tiny
    config = tmp_path / "bad.yaml"
    config.write_text("pretrain:\n  hiden_size: 32\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) in section 'pretrain': hiden_size"):
        pretrain.main(["--config", str(config), "--dataset_dir", str(data), "--semantic_ids_dir", str(sid)])


def test_settings_become_flags_that_override_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("pretrain:\n  num_epochs: 3\n  use_item_embedding: true\n")
    flags = as_flags({"num_epochs": 40, "use_item_embedding": False})
    assert flags == ["--num_epochs", "40", "--use_item_embedding", "false"]
    required = ["--dataset_dir", "data", "--semantic_ids_dir", "sid"]
    model_args, _, loop_args = parse_args(["--config", str(config), *required, *flags], *pretrain.ARGUMENT_TYPES,
                                          section="pretrain")
    assert (loop_args.num_epochs, model_args.use_item_embedding) == (40, False)
    assert as_flags(None) == []


def test_impossible_model_size_is_refused(tiny, tmp_path):
    _, data, sid, _ = tiny
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be a multiple of num_attention_heads \(4\)"):
        pretrain.main(["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), "--output_dir", str(tmp_path),
                       "--hidden_size", "30", "--num_attention_heads", "4", "--report_to", "none"])


def test_tokenizer_from_another_run_is_refused(tiny, tmp_path):
    root, data, _, _ = tiny
    items = [f"I{i:03d}" for i in range(NUM_ITEMS)]
    other = SemanticIdTokenizer.from_codes(items, [[i // 8, i % 8, 0] for i in range(NUM_ITEMS)], codebook_size=8)
    other.save_pretrained(tmp_path / "other")
    model = AutoModel.from_pretrained(root / "ft" / "final", trust_remote_code=True)
    with pytest.raises(ValueError, match="different item tables"):
        model.check_tokenizer(other)
    extra = ["I997", "I998", "I999"]  # indices 40, 41, 42: this model's padding, [MASK], and out of its range
    bigger = SemanticIdTokenizer.from_codes([*items, *extra], [[i // 8, i % 8, 1] for i in range(NUM_ITEMS + 3)],
                                            codebook_size=8)
    with pytest.raises(ValueError, match="the tokenizer was built for a different item table"):
        model.score_items(**bigger([["I999"]], return_tensors="pt"))


def test_empty_dataset_is_refused(tiny, tmp_path):
    _, data, _, _ = tiny
    full = load_sequences(data)
    empty = full["train"].select([])
    with pytest.raises(ValueError, match="the 'train' split is empty"):
        check_sequences(DatasetDict(train=empty, validation=full["validation"], test=full["test"]))
    # datasets cannot even read back an empty split: still a clear error.
    DatasetDict(train=empty, validation=full["validation"], test=full["test"]).save_to_disk(str(tmp_path / "sequences"))
    with pytest.raises(ValueError, match="a split is empty"):
        load_sequences(tmp_path)
    with pytest.raises(FileNotFoundError, match="run training/prepare_data.py"):
        load_sequences(tmp_path / "nowhere")


def test_finetune_requires_paths(capsys):
    with pytest.raises(SystemExit, match="2"):
        finetune.main(["--report_to", "none"])
    assert "--pretrained_dir" in capsys.readouterr().err


@pytest.mark.parametrize("dim", [8, 32])  # below and above hidden_size 16
def test_code_embeddings_start_from_the_codebooks(tiny, dim):
    _, _, sid, _ = tiny
    tokenizer = SemanticIdTokenizer.from_pretrained(sid)
    model = pretrain.build_model(pretrain.ModelSettings(hidden_size=16, intermediate_size=32, max_position_embeddings=8),
                                 tokenizer)
    table = model.qbert4rec.embeddings.code_embeddings.weight
    before = table.detach().clone()
    codebooks = torch.randn(2, 8, dim, generator=torch.Generator().manual_seed(0))  # 2 levels: not disambiguation
    pretrain.init_code_embeddings(model, codebooks, std=0.05, seed=0)
    codes = tokenizer.item_codes[:, :2]
    rows = model.code_tokens(torch.arange(NUM_ITEMS))[:, :2]  # (N, 2) token ids of the items' first two codes
    copied = torch.zeros(len(table), dtype=torch.bool)
    copied[4 : 4 + 2 * 8] = True  # every code of the two levels (after the 4 special tokens), used by an item or not
    assert torch.equal(table[~copied], before[~copied])  # specials and the disambiguation level untouched
    assert table[copied].std().item() == pytest.approx(0.05, rel=0.2)
    summed, quantised = table[rows].sum(1).detach(), codebook_sum(codebooks, codes)
    if dim <= 16:  # an orthonormal map and one scale: every inner product between items is kept, up to that scale
        scale = (summed.norm() / quantised.norm()) ** 2
        torch.testing.assert_close(summed @ summed.T, scale * quantised @ quantised.T, atol=1e-6, rtol=1e-4)
    else:  # a projection: near items stay nearer than far ones
        similarity = torch.corrcoef(torch.stack([(summed @ summed.T).flatten(), (quantised @ quantised.T).flatten()]))
        assert similarity[0, 1] > 0.5
    with pytest.raises(ValueError, match="do not fit"):
        pretrain.init_code_embeddings(model, torch.randn(2, 4, dim), std=0.05, seed=0)


def test_code_embedding_init_needs_the_quantizer(tiny, tmp_path):
    _, data, sid, _ = tiny
    common = ["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), "--output_dir", str(tmp_path), *TINY_LOOP]
    with pytest.raises(FileNotFoundError, match="quantizer.safetensors not found"):  # codes written by hand
        pretrain.main([*common, "--code_embedding_init", "codebooks"])
    with pytest.raises(ValueError, match="must be random or codebooks"):
        pretrain.main([*common, "--code_embedding_init", "pca"])


def test_a_checkpoint_cut_off_while_saving_is_ignored(tmp_path):
    from training.loop import find_checkpoint

    (tmp_path / "checkpoints" / "epoch_3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch_4.partial").mkdir()
    (tmp_path / "checkpoints" / "epoch_10").mkdir()
    assert find_checkpoint(str(tmp_path), "latest").name == "epoch_10"
    assert find_checkpoint(str(tmp_path / "empty"), "latest") is None
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at"):
        find_checkpoint(str(tmp_path), str(tmp_path / "nowhere"))


def test_score_item_embedding_adds_the_item_id_term_to_catalogue_scores(tiny):
    from configuration_qbert4rec import QBert4RecConfig
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling

    with pytest.raises(ValueError, match="score_item_embedding=True needs use_item_embedding=True"):
        QBert4RecConfig(score_item_embedding=True)
    _, _, sid, _ = tiny
    tok = SemanticIdTokenizer.from_pretrained(sid)
    config = QBert4RecConfig(num_codebooks=3, codebook_size=8, num_items=NUM_ITEMS, hidden_size=16, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=8, use_item_embedding=True,
                             score_item_embedding=True)
    model = QBert4RecForMaskedItemModeling(config).eval()
    model.set_item_codes(tok.item_codes)
    batch = tok([["I001", "I002"]], return_tensors="pt")
    before = model.score_items(**batch)
    with torch.no_grad():
        # item 5's own row (not in the history); a random direction, since LayerNorm-ed states sum to ~0
        model.qbert4rec.embeddings.item_embeddings.weight[5] += torch.randn(16, generator=torch.Generator().manual_seed(0))
    after = model.score_items(**batch)
    changed = (after - before).abs() > 1e-6
    assert changed[0, 5] and changed.sum() == 1


def test_length_grouped_sampler_is_a_seeded_permutation_with_similar_lengths_per_batch():
    from training.loop import LengthGroupedSampler

    lengths = [random.Random(i).randint(1, 50) for i in range(2000)]
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=0)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(len(lengths)))  # every example exactly once
    assert epoch0 == list(sampler)  # same (seed, epoch), same order: a resumed epoch replays it
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    spread = lambda order: sum(max(b) - min(b) for b in (  # noqa: E731
        [lengths[i] for i in order[s:s + 32]] for s in range(0, len(order), 32)))
    shuffled = random.Random(0).sample(range(len(lengths)), len(lengths))
    assert spread(epoch0) < spread(shuffled) / 5  # far less padding than a plain shuffle


def test_max_train_seconds_stops_after_the_epoch_that_spends_the_budget(tiny, tmp_path):
    _, data, sid, _ = tiny
    common = ["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), *TINY_MODEL, *TINY_LOOP, "--num_epochs", "5"]
    pretrain.main([*common, "--output_dir", str(tmp_path / "budget"), "--max_train_seconds", "1e-6", "--eval_every", "3"])
    record = json.loads((tmp_path / "budget" / "training_history.json").read_text())
    assert [entry["epoch"] for entry in record["history"]] == [0]  # validated although eval_every is 3
    assert (tmp_path / "budget" / "final" / "model.safetensors").is_file()


def test_min_epochs_holds_off_early_stopping(tiny, tmp_path):
    _, data, sid, _ = tiny
    # A learning rate of 0 keeps validation flat, so patience 1 alone stops after epoch 1.
    common = ["--dataset_dir", str(data), "--semantic_ids_dir", str(sid), *TINY_MODEL, *TINY_LOOP, "--num_epochs", "6",
              "--patience", "1", "--learning_rate", "0"]
    for name, min_epochs, epochs_run in (("plain", "0", 2), ("held", "4", 4)):
        pretrain.main([*common, "--output_dir", str(tmp_path / name), "--min_epochs", min_epochs])
        record = json.loads((tmp_path / name / "training_history.json").read_text())
        assert len(record["history"]) == epochs_run, name


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc (Linux)")
def test_release_freed_memory_returns_fragmented_heap_to_the_os():
    from training.memory import _libc, release_freed_memory

    if _libc() is None:
        pytest.skip("no glibc malloc_trim on this system")

    def rss_mib():
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    # 2,000 blocks of 64 KiB (below glibc's mmap threshold, so they come from the heap); keep one in ten alive so the
    # freed ones are holes that the heap cannot shrink past on its own.
    blocks = [bytearray(64 * 1024) for _ in range(2000)]
    kept = blocks[::10]
    del blocks
    before = rss_mib()
    release_freed_memory()
    assert before - rss_mib() > 50  # about 112 MiB of holes released
    del kept


HEAP_GROWTH_SCRIPT = """
import sys
from pathlib import Path
from training.memory import cap_mmap_threshold

def rss_mib():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

capped = cap_mmap_threshold() if sys.argv[1] == "cap" else False
big = b"x" * (16 << 20)  # freeing a 16 MiB block raises glibc's default threshold to 16 MiB
del big
before = rss_mib()
blocks, pins = [], []
for _ in range(8):  # 8 blocks of 8 MiB, each followed by a small allocation that pins the heap top
    blocks.append(b"x" * (8 << 20))
    pins.append(b"y" * 100_000)
del blocks
print(capped, rss_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc (Linux)")
def test_cap_mmap_threshold_returns_freed_activations_to_the_os():
    from training.memory import _libc, cap_mmap_threshold

    if _libc() is None:
        pytest.skip("no glibc on this system")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    kept = {}
    for mode in ("default", "cap"):
        out = subprocess.run([sys.executable, "-c", HEAP_GROWTH_SCRIPT, mode], env=env, cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        kept[mode] = float(out[1])
        assert out[0] == str(mode == "cap")
    assert kept["default"] > 48  # glibc's own threshold: the 64 MiB stay resident in the heap
    assert kept["cap"] < 16  # the loop's 4 MiB threshold: each block was its own mapping, unmapped when freed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
        assert cap_mmap_threshold() is False  # the user's setting wins


def test_finetune_dropout_overrides_the_pretrained_models(tiny, tmp_path):
    root, data, _, _ = tiny
    finetune.main(["--pretrained_dir", str(root / "pre" / "final"), "--dataset_dir", str(data), "--output_dir",
                   str(tmp_path / "ft"), "--num_epochs", "1", "--hidden_dropout_prob", "0.45", *TINY_LOOP])
    pretrained = json.loads((root / "pre" / "final" / "config.json").read_text())
    saved = json.loads((tmp_path / "ft" / "final" / "config.json").read_text())
    assert pretrained["hidden_dropout_prob"] == 0.2 and saved["hidden_dropout_prob"] == 0.45
    assert saved["attention_probs_dropout_prob"] == pretrained["attention_probs_dropout_prob"]  # not overridden
    model = AutoModel.from_pretrained(tmp_path / "ft" / "final", trust_remote_code=True)
    assert model.qbert4rec.embeddings.dropout.p == 0.45


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse_in_every_stage(config):
    from training.config import load_yaml, section_values

    settings = load_yaml(config)
    check_config(settings, str(config))  # unknown sections, and the id_baselines keys
    for section, dataclass_types in SECTION_TYPES.items():
        section_values(settings, section, dataclass_types)  # unknown keys raise
    if "pretrain" in settings:  # the model settings make a valid QBert4RecConfig, the masking mix a valid mix
        values = section_values(settings, "pretrain", pretrain.ARGUMENT_TYPES)
        model = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(pretrain.ModelSettings)}}
        pretrain.build_model(pretrain.ModelSettings(**model), SemanticIdTokenizer.from_codes(["a"], [[0]], codebook_size=4))
        check_masking(values.get("masking", DEFAULT_MASKING))


def beauty_with_the_long_schedule() -> dict:
    """configs/beauty.yaml with Q-Bert4Rec trained on the ID baselines' schedule (up to 40 pretraining epochs at
    patience 3, then 12 fine-tuning epochs) and 256 codes per level: the schedule and codebooks the older Beauty
    configs ran."""
    from training.config import load_yaml

    config = load_yaml(REPO_ROOT / "configs" / "beauty.yaml")
    assert config["quantize"]["codebook_size"] == 512
    config["quantize"]["codebook_size"] = 256
    own = config.pop("id_baselines")
    assert own == {"pretrain": {"num_epochs": 40, "patience": 3}, "finetune": {"num_epochs": 12, "patience": 12}}
    for section in ("pretrain", "finetune"):
        config[section].update(own[section])
    return config


def test_wide_beauty_config_differs_from_the_default_in_width_only():
    from training.config import load_yaml

    default = beauty_with_the_long_schedule()
    wide = load_yaml(REPO_ROOT / "configs" / "beauty-h128.yaml")
    assert wide["pretrain"].pop("hidden_size") == 128 and wide["pretrain"].pop("intermediate_size") == 512
    for key in ("hidden_size", "intermediate_size", "seen_item_bias", "code_embedding_init"):  # (measured before these two)
        default["pretrain"].pop(key)
    assert wide == default


def test_deeper_beauty_config_differs_from_the_default_in_depth_heads_batch_size_weight_decay_and_dropout_only():
    from training.config import load_yaml

    default = load_yaml(REPO_ROOT / "configs" / "beauty.yaml")
    deeper = load_yaml(REPO_ROOT / "configs" / "beauty-l3.yaml")
    assert deeper["pretrain"].pop("num_hidden_layers") == 3 and default["pretrain"].pop("num_hidden_layers") == 2
    assert deeper["pretrain"].pop("num_attention_heads") == 4 and default["pretrain"].pop("num_attention_heads") == 2
    for dropout in ("hidden_dropout_prob", "attention_probs_dropout_prob"):  # the pretraining default is 0.2
        assert deeper["pretrain"].pop(dropout) == 0.1 and dropout not in default["pretrain"]
    for section in ("pretrain", "finetune"):
        assert deeper[section].pop("batch_size") == 128 and default[section].pop("batch_size") == 256
        assert deeper[section].pop("weight_decay") == 0.3 and "weight_decay" not in default[section]
    assert deeper == default


def test_seen_item_bias_beauty_config_differs_from_the_default_in_the_code_embedding_init_only():
    from training.config import load_yaml

    default = beauty_with_the_long_schedule()
    seen = load_yaml(REPO_ROOT / "configs" / "beauty-seen.yaml")
    assert default["pretrain"].pop("code_embedding_init") == "codebooks" and seen["pretrain"]["seen_item_bias"] is True
    assert seen == default


def test_beauty_config_runs_each_schedule_to_its_end():
    from training.config import load_yaml

    config = load_yaml(REPO_ROOT / "configs" / "beauty.yaml")
    assert [(config[s]["num_epochs"], config[s]["patience"]) for s in ("pretrain", "finetune")] == [(10, 10), (5, 5)]


def test_finetune_adds_a_seen_item_logit_that_evaluate_reproduces(tiny, tmp_path):
    """`--seen_item_bias` on a pretrained model without it: the ring's users never revisit an item, so the logit
    turns negative; evaluate.py passes the histories to the saved model and gets the same metrics."""
    root, data, _, _ = tiny
    metrics = finetune.main(["--pretrained_dir", str(root / "pre" / "final"), "--dataset_dir", str(data), "--output_dir",
                             str(tmp_path / "ft"), "--num_epochs", "3", "--seen_item_bias", "true", *TINY_LOOP])
    model = AutoModel.from_pretrained(tmp_path / "ft" / "final", trust_remote_code=True)
    assert model.config.seen_item_bias and model.head.seen_item_bias.item() < 0
    again = evaluate.main(["--model_dir", str(tmp_path / "ft" / "final"), "--dataset_dir", str(data),
                           "--output_file", str(tmp_path / "eval.json")])
    assert again["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-6)


def test_seen_item_logit_learns_that_beauty_users_do_not_buy_twice(beauty_dir, tmp_path):
    """Real data: one pretraining epoch of a tiny ID model on 3,000 Beauty users pushes history items down."""
    from benchmarks.baselines import id_tokenizer

    lines = (beauty_dir / "Beauty.txt").read_text().splitlines()[:3000]
    users, sequences = [line.split()[0] for line in lines], [line.split()[1:] for line in lines]
    assert all(len(set(s)) == len(s) for s in sequences)  # what the logit has to learn
    write_leave_one_out(tmp_path / "data", users, sequences)
    id_tokenizer(sorted({i for s in sequences for i in s})).save_pretrained(tmp_path / "sid")
    pretrain.main(["--dataset_dir", str(tmp_path / "data"), "--semantic_ids_dir", str(tmp_path / "sid"), "--output_dir",
                   str(tmp_path / "pre"), "--num_epochs", "1", "--seen_item_bias", "true", "--loss_type", "items",
                   *TINY_MODEL, *TINY_LOOP])
    model = AutoModel.from_pretrained(tmp_path / "pre" / "final", trust_remote_code=True)
    assert model.head.seen_item_bias.item() < -0.1


def test_finetune_refuses_a_seen_item_logit_without_the_catalogue_loss(tiny, tmp_path):
    root, data, _, _ = tiny
    with pytest.raises(ValueError, match="catalogue loss"):
        finetune.main(["--pretrained_dir", str(root / "pre" / "final"), "--dataset_dir", str(data), "--output_dir",
                       str(tmp_path / "ft"), "--seen_item_bias", "true", "--loss_type", "codes", *TINY_LOOP])
