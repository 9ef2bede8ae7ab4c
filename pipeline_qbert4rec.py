"""The `sequential-recommendation` pipeline of Q-Bert4Rec checkpoints (remote code, saved beside the model).

    from transformers import pipeline
    recommend = pipeline("sequential-recommendation", model="ORG/qbert4rec-beauty", trust_remote_code=True)
    recommend(["B004756YJA", "B004ZT0SSG"], top_k=3)
    # [{"item_id": "B00...", "score": 9.1, "title": "..."}, ...]: one history in, one list of top k out
    recommend([history_1, history_2], top_k=10)    # a list of histories in, one list per history out

A history is a list of item-id strings, oldest first. `title` is there when the checkpoint's item table carries
titles. Options: `top_k` (10), `exclude_history` (False: history items stay candidates), `batch_size` (histories
scored together, 64), and the tokenizer's `unknown_items` (load it with `unknown_items="skip"` to drop unknown ids).
"""

import torch
from transformers import Pipeline


def is_history(value) -> bool:
    """Whether `value` is one history (a list of item ids) rather than a list of histories."""
    return isinstance(value, (list, tuple)) and all(not isinstance(item, (list, tuple)) for item in value)


def check_history(history, position: int | None = None) -> None:
    """Refuse what is not a non-empty list of item-id strings, naming the history and the item."""
    where = "the history" if position is None else f"history {position}"
    if not isinstance(history, (list, tuple)):
        raise TypeError(f"{where} must be a list of item-id strings, got {type(history).__name__}")
    if not history:
        raise ValueError(f"{where} is empty: give at least one item id (with no history, every user gets the "
                         "same most-popular-like list)")
    for item in history:
        if not isinstance(item, str):
            raise TypeError(f"{where}: item ids are strings, got {item!r} ({type(item).__name__}); "
                            f"write {str(item)!r}")


class SequentialRecommendationPipeline(Pipeline):
    """Histories of item ids -> top-k next items with scores (`model.recommend`), in the order given."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, top_k=None, exclude_history=None):
        forward = {}
        if top_k is not None:
            forward["top_k"] = top_k
        if exclude_history is not None:
            forward["exclude_history"] = exclude_history
        return {}, forward, {}

    def __call__(self, histories, batch_size: int = 64, **kwargs):
        single = is_history(histories)
        batch = [histories] if single else list(histories)
        if not batch:
            raise ValueError("no histories given: pass one history (a list of item ids) or a list of them")
        for position, history in enumerate(batch):
            check_history(history, None if single else position)
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        results = []
        for start in range(0, len(batch), batch_size):
            results += self.run_single(batch[start : start + batch_size], preprocess, forward, postprocess)
        return results[0] if single else results

    def preprocess(self, histories):
        return self.tokenizer(histories, return_tensors="pt")

    def _forward(self, model_inputs, top_k=10, exclude_history=False):
        out = self.model.recommend(**model_inputs, top_k=top_k, exclude_history=exclude_history)
        return {"item_indices": out.item_indices, "scores": out.scores}

    def postprocess(self, model_outputs):
        item_ids = self.tokenizer.decode_items(model_outputs["item_indices"])
        titles = self.tokenizer.item_titles
        show_titles = any(titles)
        results = []
        for ids, indices, scores in zip(item_ids, model_outputs["item_indices"].tolist(),
                                        model_outputs["scores"].to(torch.float32).tolist()):
            rows = [{"item_id": item_id, "score": score} for item_id, score in zip(ids, scores)]
            if show_titles:
                for row, index in zip(rows, indices):
                    row["title"] = titles[index]
            results.append(rows)
        return results
