"""The whole pipeline on the smoke slice of real Beauty data, and a training run killed with SIGKILL then resumed."""

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
from transformers import AutoModel, AutoTokenizer

from training import pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, beauty_dir):
    out = tmp_path_factory.mktemp("smoke")
    pipeline.main(["--config", SMOKE, "--output_dir", str(out)])
    return out


def test_smoke_pipeline_ends_with_a_loadable_model_and_metrics(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    summary = json.loads((smoke_run / "data" / "summary.json").read_text())
    assert metrics["num_users"] == summary["users"] == 300
    assert metrics["num_items"] == summary["items"]
    assert set(metrics["seconds_per_stage"]) == set(pipeline.STAGES)
    for key in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"):
        assert 0.0 <= metrics[key] <= 1.0
    stats = json.loads((smoke_run / "semantic_ids" / "codebook_stats.json").read_text())
    assert stats["num_items"] == summary["items"] and stats["levels"][-1]["distinct_prefixes"] == summary["items"]
    tok = AutoTokenizer.from_pretrained(smoke_run / "final", trust_remote_code=True)
    model = AutoModel.from_pretrained(smoke_run / "final", trust_remote_code=True)
    model.check_tokenizer(tok)
    assert len(set(map(tuple, tok.item_codes.tolist()))) == tok.num_items  # every semantic ID unique
    history = tok.item_ids[:3]
    out = model.recommend(**tok([history], return_tensors="pt"), top_k=5)
    assert len(tok.decode_items(out.item_indices)[0]) == 5


def test_code_embeddings_from_the_real_codebooks_keep_stage_2_neighbours(smoke_run):
    """Before any training, items that share their first code are closer than items that do not."""
    import torch.nn.functional as F

    from tokenization_semantic_id import SemanticIdTokenizer
    from training.pretrain import ModelArgs, build_model, init_code_embeddings
    from training.quantize import load_codebooks

    tokenizer = SemanticIdTokenizer.from_pretrained(smoke_run / "semantic_ids")
    model = build_model(ModelArgs(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_len=20), tokenizer)
    codebooks = load_codebooks(smoke_run / "semantic_ids")
    init_code_embeddings(model, codebooks, std=0.06, seed=0)
    rows = tokenizer.item_codes[:, :2] + model._level_offsets()[:2]
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


def test_second_run_skips_finished_stages(smoke_run, capsys):
    before = json.loads((smoke_run / "timings.json").read_text())
    pipeline.main(["--config", SMOKE, "--output_dir", str(smoke_run)])
    printed = capsys.readouterr().out
    assert all(f"[pipeline] {stage}: done already" in printed for stage in pipeline.STAGES)
    assert json.loads((smoke_run / "timings.json").read_text()) == before


def test_unknown_config_section_is_refused(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("pretrian:\n  num_epochs: 1\n")
    with pytest.raises(ValueError, match=r"unknown section\(s\) pretrian"):
        pipeline.main(["--config", str(config), "--output_dir", str(tmp_path / "out")])


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
