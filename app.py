"""Q-Bert4Rec demo: search a checkpoint's catalogue, build a history, see its top 10 and what their codes stand for.

    python app.py --checkpoint outputs/beauty/final             # a checkpoint folder
    python app.py --checkpoint ORG/qbert4rec-beauty             # or a Hub model repo id (cached ones work offline)
    QBERT4REC_CHECKPOINT=ORG/qbert4rec-beauty python app.py     # how a Hugging Face Space passes it

The checkpoint is read through its public API only (`AutoTokenizer` / `AutoModel` with `trust_remote_code=True`,
plus its `code_prefixes.json`), so the app runs wherever the checkpoint does: a Space holds this file and
`requirements.txt`, not the repository. The logic is plain functions of a loaded [`Checkpoint`] (`search`,
`add_item`, `recommend_rows`, `explain_prefixes`); `build_demo` lays them out and its handlers only convert.
"""

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModel, AutoTokenizer

CHECKPOINT_ENV = "QBERT4REC_CHECKPOINT"
PREFIXES_FILE = "code_prefixes.json"
TOP_K = 10
MAX_MATCHES = 20

MATCH_HEADERS = ["Item id", "Title", "Semantic ID"]
HISTORY_HEADERS = ["Position", "Item id", "Title"]
RECOMMENDATION_HEADERS = ["Rank", "Title", "Item id", "Score", "Semantic ID", "What the codes stand for"]
EMPTY_HISTORY = "The history is empty: search the catalogue and add at least one item to get recommendations."
NO_PREFIXES = f"this checkpoint ships no {PREFIXES_FILE}, so what its codes stand for is not known"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its tokenizer (the catalogue), its model, and what each code prefix stands for.

    Args:
        source (`str`): the folder or Hub repo id it came from.
        prefixes (`dict | None`): `code_prefixes.json`'s `prefixes` (`"12,200"` -> `{"num_items", "leaf_categories"}`),
            `None` when the checkpoint ships none.
    """

    source: str
    tokenizer: object
    model: object
    prefixes: dict | None
    # The catalogue read once: item ids, titles ("" when none) and their lower-case form, in item index order.
    item_ids: list = field(init=False)
    titles: list = field(init=False)
    lower_titles: list = field(init=False)
    index: dict = field(init=False)

    def __post_init__(self):
        self.item_ids = self.tokenizer.item_ids
        self.titles = self.tokenizer.item_titles
        self.lower_titles = [title.lower() for title in self.titles]
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}

    @property
    def has_titles(self) -> bool:
        return any(self.titles)

    def title(self, item_id: str) -> str:
        """The item's title, or its id when the table gives it none."""
        return self.titles[self.index[item_id]] or item_id


def load_prefixes(source: str, num_codebooks: int) -> dict | None:
    """`code_prefixes.json` of a checkpoint folder or Hub repo id (from the cache under `HF_HUB_OFFLINE=1`); `None`
    when the checkpoint has none."""
    if Path(source).is_dir():
        path = Path(source) / PREFIXES_FILE
        if not path.is_file():
            return None
    else:
        try:
            path = hf_hub_download(source, PREFIXES_FILE)
        except EntryNotFoundError:
            return None
    table = json.loads(Path(path).read_text())
    if table.get("num_codebooks") != num_codebooks or not isinstance(table.get("prefixes"), dict):
        raise ValueError(f"{source}: {PREFIXES_FILE} does not describe this checkpoint's {num_codebooks}-level codes "
                         f"(num_codebooks={table.get('num_codebooks')!r})")
    return table["prefixes"]


def load_checkpoint(source: str) -> Checkpoint:
    """Load a checkpoint folder or Hub repo id through its remote code."""
    source = str(source)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    model.check_tokenizer(tokenizer)
    return Checkpoint(source, tokenizer, model, load_prefixes(source, tokenizer.num_codebooks))


def describe(checkpoint: Checkpoint) -> str:
    """One paragraph about the checkpoint, shown above the app."""
    tok = checkpoint.tokenizer
    retired = len(tok.retired_items)
    return (
        f"Checkpoint `{checkpoint.source}`: {tok.num_items} items"
        + (f" ({retired} retired, never recommended)" if retired else "")
        + f", semantic IDs of {tok.num_codebooks} codes out of {tok.codebook_size} each. "
        + ("Search by title or item id." if checkpoint.has_titles
           else "Its item table has no titles: search by item id, items are shown by id.")
        + (f" Code prefixes explained from `{PREFIXES_FILE}`." if checkpoint.prefixes is not None
           else f" It ships no `{PREFIXES_FILE}`: recommendations come without code explanations.")
    )


def search(checkpoint: Checkpoint, query: str, limit: int = MAX_MATCHES) -> tuple[list, str]:
    """Items whose id is `query` or whose title contains it (case-insensitive).

    Returns:
        up to `limit` rows `[item id, title, semantic ID]` (an exact id first, then titles in catalogue order), and a
        message saying how many matched.
    """
    query = (query or "").strip()
    if not query:
        return [], "Type part of a title, or an item id, to search the catalogue."
    exact = [checkpoint.index[query]] if query in checkpoint.index else []
    needle = query.lower()
    found = exact + [i for i, title in enumerate(checkpoint.lower_titles) if needle in title and i not in exact]
    if not found:
        where = "no title contains it and no item has that id" if checkpoint.has_titles else "no item has that id"
        return [], f"Nothing matches {query!r}: {where}."
    rows = [[checkpoint.item_ids[i], checkpoint.title(checkpoint.item_ids[i]),
             checkpoint.tokenizer.render(checkpoint.item_ids[i])] for i in found[:limit]]
    shown = f"; showing the first {limit}" if len(found) > limit else ""
    return rows, f"{len(found)} item{'s' * (len(found) != 1)} match {query!r}{shown}."


def unknown_item(checkpoint: Checkpoint, item_id: str) -> str:
    return (f"Unknown item id {item_id!r}: it is not in this checkpoint's catalogue of {len(checkpoint.item_ids)} "
            "items. Search by title to find an item's id.")


def add_item(checkpoint: Checkpoint, history: list, item_id: str) -> tuple[list, str]:
    """`history` (item ids, oldest first) with `item_id` appended, and a message; unchanged for an unknown id."""
    item_id = (item_id or "").strip()
    if not item_id:
        return history, "Type an item id, or pick a search match, to add it to the history."
    if item_id not in checkpoint.index:
        return history, unknown_item(checkpoint, item_id)
    history = [*history, item_id]
    return history, f"Added {item_id} ({checkpoint.title(item_id)}): {len(history)} item(s) in the history."


def remove_item(history: list, position) -> tuple[list, str]:
    """`history` without its item at 1-based `position`, and a message."""
    if position is None:
        return history, "Type the position (1 = oldest) of the item to remove."
    position = int(position)
    if not 1 <= position <= len(history):
        return history, f"No item at position {position}: the history holds {len(history)} item(s)."
    return history[: position - 1] + history[position:], f"Removed item {position} ({history[position - 1]})."


def history_rows(checkpoint: Checkpoint, history: list) -> list:
    """Rows `[position, item id, title]` of the history, oldest first."""
    return [[position, item_id, checkpoint.title(item_id)] for position, item_id in enumerate(history, start=1)]


def explain_prefixes(checkpoint: Checkpoint, item_id: str) -> list[str]:
    """What each code prefix of an item's semantic ID stands for, one line per prefix length 1 .. L - 1, e.g.
    `"<a_12> → Nail Polish (30 of 40), Nail Art (5 of 40)"`: the prefix's most frequent leaf categories, with how
    many of the items that share the prefix are in each."""
    if checkpoint.prefixes is None:
        return [NO_PREFIXES]
    tokens = checkpoint.tokenizer.tokenize(item_id)  # ["<a_12>", "<b_200>", ...]
    codes = checkpoint.tokenizer.item_codes[checkpoint.index[item_id]].tolist()
    lines = []
    for length in range(1, len(codes)):
        entry = checkpoint.prefixes.get(",".join(map(str, codes[:length])))
        prefix = "".join(tokens[:length])
        if entry is None:
            lines.append(f"{prefix} → not in {PREFIXES_FILE} (an item added after it was made)")
        elif not entry["leaf_categories"]:
            lines.append(f"{prefix} → {entry['num_items']} items, none with a category")
        else:
            lines.append(f"{prefix} → " + ", ".join(f"{name} ({count} of {entry['num_items']})"
                                                    for name, count in entry["leaf_categories"]))
    return lines


def recommend_rows(checkpoint: Checkpoint, history: list, top_k: int = TOP_K) -> list[dict]:
    """The top `top_k` next items after `history` (item ids, oldest first), best first.

    Returns:
        one dict per item: `rank`, `title` (the id when the table has none), `item_id`, `score`, `semantic_id`,
        `prefixes` (lines of `explain_prefixes`). Retired items never appear (the model scores them `-inf`).

    Raises:
        ValueError: the history is empty or holds an unknown item id.
    """
    if not history:
        raise ValueError(EMPTY_HISTORY)
    unknown = [item_id for item_id in history if item_id not in checkpoint.index]
    if unknown:
        raise ValueError(unknown_item(checkpoint, unknown[0]))
    tok = checkpoint.tokenizer
    top_k = min(top_k, tok.num_items - len(tok.retired_items))
    with torch.no_grad():
        out = checkpoint.model.recommend(**tok([list(history)], return_tensors="pt"), top_k=top_k)
    item_ids, scores = tok.decode_items(out.item_indices[0]), out.scores[0].float().tolist()
    return [
        {"rank": rank, "title": checkpoint.title(item_id), "item_id": item_id, "score": score,
         "semantic_id": tok.render(item_id), "prefixes": explain_prefixes(checkpoint, item_id)}
        for rank, (item_id, score) in enumerate(zip(item_ids, scores), start=1)
        if math.isfinite(score)
    ]


def build_demo(checkpoint: Checkpoint) -> gr.Blocks:
    """The Gradio app over `checkpoint`. Endpoints (for `gradio_client`): `/search` (query), `/add` (item id),
    `/remove` (position), `/clear`, `/recommend`; the history lives in the session."""

    def on_search(query):
        return search(checkpoint, query)

    def on_pick(evt: gr.SelectData):
        return evt.row_value[0]

    def on_add(item_id, history):
        history, message = add_item(checkpoint, history, item_id)
        return history, history_rows(checkpoint, history), message

    def on_remove(position, history):
        history, message = remove_item(history, position)
        return history, history_rows(checkpoint, history), message

    def on_clear():
        return [], [], "History cleared."

    def on_recommend(history):
        try:
            rows = recommend_rows(checkpoint, history)
        except ValueError as error:
            return [], str(error)
        table = [[r["rank"], r["title"], r["item_id"], round(r["score"], 4), r["semantic_id"], "\n".join(r["prefixes"])]
                 for r in rows]
        return table, f"Top {len(rows)} after {len(history)} item(s), best first."

    with gr.Blocks(title="Q-Bert4Rec") as demo:
        history = gr.State([])
        gr.Markdown("# Q-Bert4Rec: next-item recommendations over semantic IDs")
        gr.Markdown(describe(checkpoint))
        with gr.Row():
            query = gr.Textbox(label="Search the catalogue", placeholder="a word of a title, or an item id", scale=4)
            search_button = gr.Button("Search", scale=1)
        search_message = gr.Markdown()
        matches = gr.Dataframe(headers=MATCH_HEADERS, label="Matches (click one to pick it)", interactive=False,
                               wrap=True)
        with gr.Row():
            item = gr.Textbox(label="Item id", placeholder="picked from the matches, or typed", scale=3)
            add_button = gr.Button("Add to history", variant="primary", scale=1)
            position = gr.Number(label="Position to remove", precision=0, minimum=1, scale=1)
            remove_button = gr.Button("Remove", scale=1)
            clear_button = gr.Button("Clear history", scale=1)
        history_message = gr.Markdown()
        history_table = gr.Dataframe(headers=HISTORY_HEADERS, label="History (oldest first)", interactive=False)
        recommend_button = gr.Button("Recommend", variant="primary")
        recommend_message = gr.Markdown()
        recommendations = gr.Dataframe(headers=RECOMMENDATION_HEADERS, label=f"Top {TOP_K}", interactive=False,
                                       wrap=True)

        gr.on([query.submit, search_button.click], on_search, query, [matches, search_message], api_name="search")
        matches.select(on_pick, None, item, api_visibility="private")
        refresh = {"fn": on_recommend, "inputs": history, "outputs": [recommendations, recommend_message],
                   "api_visibility": "private"}
        edits = [(add_button.click, on_add, [item, history], "add"),
                 (remove_button.click, on_remove, [position, history], "remove"),
                 (clear_button.click, on_clear, None, "clear")]
        for trigger, fn, inputs, name in edits:  # every change of the history refreshes the top 10
            trigger(fn, inputs, [history, history_table, history_message], api_name=name).then(**refresh)
        recommend_button.click(on_recommend, history, [recommendations, recommend_message], api_name="recommend")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=os.environ.get(CHECKPOINT_ENV),
                        help=f"checkpoint folder or Hub model repo id (default: ${CHECKPOINT_ENV})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    if not args.checkpoint:
        parser.error(f"no checkpoint: pass --checkpoint DIR_OR_REPO_ID or set ${CHECKPOINT_ENV}")
    return args


def main(argv=None):
    args = parse_args(argv)
    demo = build_demo(load_checkpoint(args.checkpoint))
    demo.launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
