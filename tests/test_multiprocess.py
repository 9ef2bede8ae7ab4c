"""Two processes on CPUs (gloo; the code path of multi-GPU DDP), launched with torchrun on the real smoke data:
checkpoints saved by both processes, every test user evaluated exactly once with an uneven last batch, and
checkpoints that resume with another number of processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOKE

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(script: str, processes: int, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` with `processes` processes: torchrun with ACCELERATE_USE_CPU=1 for 2 (accelerate launch --cpu starts
    one), plain python for 1."""
    command = ([str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes)] if processes > 1
               else [sys.executable])
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, str(REPO_ROOT / "training" / script), "--config", SMOKE, *flags],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def two_process_finetune(smoke_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune-2")
    flags = ["--dataset_dir", str(smoke_run / "data"), "--pretrained_dir", str(smoke_run / "pretrain" / "final"),
             "--num_epochs", "2", "--eval_batch_size", "64", "--report_to", "none"]
    launch("finetune.py", 2, *flags, "--output_dir", str(out / "run"), cwd=out)
    return out, flags


def test_two_processes_save_checkpoints_and_evaluate_every_user_once(smoke_run, two_process_finetune):
    out, _ = two_process_finetune
    run = out / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    # 300 users in batches of 64 over 2 processes: the last batch is uneven, and gather_for_metrics drops the padding.
    assert metrics["num_users"] == 300
    for epoch in (0, 1):
        saved = run / "checkpoints" / f"epoch_{epoch}"
        assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in saved.iterdir()}
    assert not list((run / "checkpoints").glob("*.partial"))
    # One process evaluating the saved model gives the same numbers: no user counted twice or dropped.
    from training import evaluate

    alone = evaluate.main(["--model_dir", str(run / "final"), "--dataset_dir", str(smoke_run / "data"),
                           "--split", "test", "--output_file", str(out / "alone.json")])
    for key in ("recall@10", "ndcg@10", "mrr", "num_users"):
        assert alone[key] == pytest.approx(metrics[key], abs=1e-9), key


def test_a_two_process_checkpoint_resumes_in_one_process_and_back(two_process_finetune):
    out, flags = two_process_finetune
    resumed = out / "resumed"
    subprocess.run(["cp", "-r", str(out / "run"), str(resumed)], check=True)
    more = [flag if flag != "2" else "3" for flag in flags]  # --num_epochs 3
    one = launch("finetune.py", 1, *more, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest", cwd=out)
    assert f"resuming from {resumed / 'checkpoints' / 'epoch_1'}" in one.stdout + one.stderr
    assert json.loads((resumed / "metrics.json").read_text())["num_processes"] == 1
    assert (resumed / "checkpoints" / "epoch_2").is_dir()
    longer = [flag if flag != "3" else "4" for flag in more]  # and back to two processes
    two = launch("finetune.py", 2, *longer, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest", cwd=out)
    assert f"resuming from {resumed / 'checkpoints' / 'epoch_2'}" in two.stdout + two.stderr
    assert json.loads((resumed / "metrics.json").read_text())["num_processes"] == 2


def test_two_process_pretraining_ends_with_a_final_model(smoke_run, tmp_path):
    launch("pretrain.py", 2, "--dataset_dir", str(smoke_run / "data"), "--semantic_ids_dir",
           str(smoke_run / "semantic_ids"), "--output_dir", str(tmp_path / "pretrain"), "--num_epochs", "1",
           "--report_to", "none", cwd=tmp_path)
    assert (tmp_path / "pretrain" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "pretrain" / "checkpoints" / "epoch_0" / "random_states_1.pkl").is_file()
