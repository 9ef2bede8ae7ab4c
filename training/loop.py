"""The training loop shared by `pretrain.py` and `finetune.py` (after accelerate's `run_mlm_no_trainer`).

One epoch = one pass over the training sequences. After each epoch: validation (full ranking, NDCG@10 selects),
the best weights saved as a `save_pretrained` folder, and `accelerator.save_state` so a killed run resumes exactly
(`--resume_from_checkpoint`): model, optimizer, scheduler, RNG states, the data order (seedable sampler) and the
early-stopping state all come back, and masks are drawn from (seed, epoch, batch), so the resumed run matches an
uninterrupted one of the same seed.
"""

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from training.evaluate import evaluate_model
from training.memory import RELEASE_MEMORY_EVERY, cap_mmap_threshold, evaluation_allocator, release_freed_memory

CHECKPOINTS = "checkpoints"
BEST = "best"
@dataclass
class LoopArgs:
    """Optimisation settings shared by pretraining and fine-tuning."""

    output_dir: str = field(default="outputs/run", metadata={"help": "where checkpoints, logs and the final model go"})
    seed: int = field(default=42, metadata={"help": "random seed (data order, masks, init, dropout)"})
    num_epochs: int = field(default=50, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=256, metadata={"help": "sequences per optimisation step (per process)"})
    # The encoder runs on a whole batch; catalogue logits are made and ranked 64 histories at a time
    # (training.evaluate.RANK_BLOCK), so the batch size hardly changes memory.
    eval_batch_size: int = field(default=512, metadata={"help": "histories per evaluation batch"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "fraction of steps with linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate)"})
    patience: int = field(default=5, metadata={"help": "epochs without validation NDCG@10 gain before stopping"})
    min_epochs: int = field(
        default=0, metadata={"help": "never stop early before this many epochs (rides out an early validation plateau)"}
    )
    max_train_seconds: float = field(
        default=None, metadata={"help": "stop after the first epoch that ends past this many seconds of training"}
    )
    eval_every: int = field(default=1, metadata={"help": "validate (and checkpoint) every this many epochs"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest save_state checkpoints kept"})
    resume_from_checkpoint: str = field(
        default=None, metadata={"help": "a checkpoint folder, or 'latest' for the newest one under output_dir"}
    )
    max_train_sequences: int = field(default=None, metadata={"help": "use only this many training sequences (smoke runs)"})
    max_eval_users: int = field(default=None, metadata={"help": "validate on only this many users (faster selection)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    group_by_length: bool = field(
        default=True, metadata={"help": "batch sequences of similar lengths together (less padding, same random order)"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker (tensorboard, none)"})


class EarlyStopping:
    """Best validation score, its epoch and the patience count; checkpointed with the run."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.bad_epochs, self.history = patience, -math.inf, -1, 0, []

    def update(self, epoch: int, score: float) -> bool:
        """Record `score`; True when it is the best so far."""
        self.history.append({"epoch": epoch, "score": score})
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {k: getattr(self, k) for k in ("patience", "best", "best_epoch", "bad_epochs", "history")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class EpochCounter:
    """The next epoch to run, and the training seconds so far (validation excluded) and at each validation;
    checkpointed so a resumed run knows where it stopped."""

    def __init__(self):
        self.next_epoch, self.train_seconds, self.seconds_at_evaluation = 0, 0.0, []

    def state_dict(self):
        return {k: getattr(self, k) for k in ("next_epoch", "train_seconds", "seconds_at_evaluation")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class LengthGroupedSampler(Sampler):
    """A random order in which each run of `batch_size` indices has similar sequence lengths (transformers'
    `get_length_grouped_indices`), drawn from `(seed, epoch)` so a resumed epoch sees the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def make_train_loader(train_dataset, collator, args: LoopArgs) -> DataLoader:
    """Shuffled training batches of `train_dataset` (rows with `item_indices`) made by `collator`; with
    `args.group_by_length`, batches of similar lengths (sequences are padded to the longest in their batch, so mixed
    lengths waste most of the compute)."""
    sampler = None
    if args.group_by_length:
        sampler = LengthGroupedSampler([len(items) for items in train_dataset["item_indices"]], args.batch_size, args.seed)
    return DataLoader(train_dataset, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                      collate_fn=collator, num_workers=args.num_workers)


def make_accelerator(args: LoopArgs, project_name: str) -> Accelerator:
    """An `Accelerator` with a seedable sampler (reproducible, resumable data order) and optional trackers."""
    log_with = None if args.report_to in (None, "", "none") else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    if log_with:
        config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project_name, config=config)
    return accelerator


def find_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from (`'latest'` = newest under `output_dir/checkpoints`), or None."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder at {path}")
        return path
    checkpoints = _checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _checkpoints(output_dir: str) -> list:
    """Complete checkpoint folders `epoch_<n>`, oldest first (a `.partial` one was cut off while saving)."""
    folders = (Path(output_dir) / CHECKPOINTS).glob("epoch_*")
    complete = [p for p in folders if p.name.split("_", 1)[1].isdigit()]
    return sorted(complete, key=lambda p: int(p.name.split("_", 1)[1]))


def prune_checkpoints(output_dir: str, keep: int):
    checkpoints = _checkpoints(output_dir)
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def train(model, tokenizer, train_dataset, collator, eval_loader, args: LoopArgs, accelerator: Accelerator):
    """Train `model` on `train_dataset` batches made by `collator`; select on `eval_loader` by validation NDCG@10.

    `collator.set_epoch(epoch)` (when present) is called before each epoch so masks depend on (seed, epoch, batch).
    Returns the early-stopping record; the best weights are in `output_dir/best` (model + tokenizer).
    """
    output_dir = Path(args.output_dir)
    cap_mmap_threshold()
    train_loader = make_train_loader(train_dataset, collator, args)
    sampler = train_loader.sampler
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = max(1, steps_per_epoch * args.num_epochs)
    warmup = int(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    stopping, epochs = EarlyStopping(args.patience), EpochCounter()
    accelerator.register_for_checkpointing(stopping, epochs)

    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"no checkpoint under {output_dir / CHECKPOINTS}: starting from scratch")

    for epoch in range(epochs.next_epoch, args.num_epochs):
        if stopping.should_stop and epoch >= args.min_epochs:
            break
        epoch_start = time.perf_counter()
        model.train()
        if hasattr(collator, "set_epoch"):
            collator.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        total_loss, batches = 0.0, 0
        progress = tqdm(train_loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False)
        for batch in progress:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    last = find_checkpoint(args.output_dir, "latest")
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {epoch}, batch {batches}: stopping. The last good "
                        f"checkpoint is {last if last else 'none (no epoch finished yet)'}; lower the learning rate "
                        "or use mixed_precision=no"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            total_loss += loss.item()
            batches += 1
            progress.set_postfix(loss=f"{total_loss / batches:.4f}", refresh=False)  # shown at the next update
            if batches % RELEASE_MEMORY_EVERY == 0:
                release_freed_memory()
        epochs.next_epoch = epoch + 1
        epochs.train_seconds += time.perf_counter() - epoch_start
        log = {"train/loss": total_loss / max(1, batches), "train/lr": scheduler.get_last_lr()[0]}

        out_of_time = bool(args.max_train_seconds) and epochs.train_seconds >= args.max_train_seconds
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.num_epochs or out_of_time:
            with evaluation_allocator():
                metrics = evaluate_model(accelerator.unwrap_model(model), eval_loader, accelerator=accelerator)
            log.update({f"validation/{k}": v for k, v in metrics.items() if isinstance(v, float)})
            epochs.seconds_at_evaluation.append(round(epochs.train_seconds, 3))
            if stopping.update(epoch, metrics["ndcg@10"]):
                save_final(accelerator, model, tokenizer, output_dir / BEST)
            accelerator.print(
                f"epoch {epoch}: loss {log['train/loss']:.4f}  val N@10 {metrics['ndcg@10']:.4f} R@10 "
                f"{metrics['recall@10']:.4f}  (best {stopping.best:.4f} at epoch {stopping.best_epoch})  "
                f"{epochs.train_seconds:.0f} s of training"
            )
            save_checkpoint(accelerator, output_dir / CHECKPOINTS / f"epoch_{epoch}")
            if accelerator.is_main_process:
                prune_checkpoints(args.output_dir, args.keep_checkpoints)
        accelerator.log(log, step=epoch)
        if out_of_time:
            accelerator.print(f"stopping: {epochs.train_seconds:.0f} s of training reached --max_train_seconds")
            break
    if accelerator.is_main_process:
        record = {**stopping.state_dict(), "train_seconds_at_evaluation": epochs.seconds_at_evaluation}
        (output_dir / "training_history.json").write_text(json.dumps(record, indent=2))
    return stopping


def save_checkpoint(accelerator: Accelerator, path: Path):
    """`save_state` into a temporary folder, then rename it: a run killed while saving leaves no half checkpoint.
    With several processes the main one makes and renames the folder, and every process writes its part (its random
    states) in between."""
    partial = path.with_name(path.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
    accelerator.wait_for_everyone()


def save_final(accelerator: Accelerator, model, tokenizer, path: Path):
    """`save_pretrained` folder with model, tokenizer and the remote-code files."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(path)
