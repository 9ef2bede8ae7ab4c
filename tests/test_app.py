"""The Gradio demo (app.py) on the real smoke checkpoint: its functions in-process, and the app itself started as a
subprocess that cannot import the repository (as on a Space), driven through `gradio_client` the way a user clicks:
search, add, remove, clear, recommend; its messages for an empty history and an unknown item id."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from test_remote_code import isolated_site_packages, populate_hub_cache

APP = Path(__file__).resolve().parents[1] / "app.py"
REPO_ID = "qbert4rec-test/demo"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
STARTUP_S = 120

# Runs app.py as `__main__` with `python -I -S`: only the given site-packages folders on sys.path, so neither the
# repository's modules nor its editable install can be imported (a Space has only app.py and the checkpoint).
RUNNER = r"""
import importlib.util, json, runpy, sys
sys.path.extend(json.loads(sys.argv.pop(1)))
hidden = [name for name in ("training", "modeling_qbert4rec", "tokenization_semantic_id")
          if importlib.util.find_spec(name) is not None]
assert not hidden, f"the repository is importable: {hidden}"
runpy.run_path("app.py", run_name="__main__")
"""


def load_app():
    spec = importlib.util.spec_from_file_location("app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = load_app()


@pytest.fixture(scope="module")
def final(smoke_run):
    folder = smoke_run / "final"
    assert (folder / app.PREFIXES_FILE).is_file(), "the pipeline's final/ should ship code_prefixes.json"
    return folder


@pytest.fixture(scope="module")
def checkpoint(final):
    return app.load_checkpoint(final)


@pytest.fixture(scope="module")
def histories(smoke_run):
    """Two real test users' histories (item ids, oldest first)."""
    from training.prepared import load_sequences

    return [list(ids) for ids in load_sequences(smoke_run / "data")["test"]["item_ids"][:2]]


def distinctive_word(title: str, titles: list) -> str:
    """The longest word of `title` that at most `app.MAX_MATCHES` titles contain, so its item is among the matches."""
    for word in sorted(title.split(), key=len, reverse=True):
        if sum(word.lower() in t.lower() for t in titles) <= app.MAX_MATCHES:
            return word
    raise AssertionError(f"no word of {title!r} is rare enough to search")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(source: str, cwd: Path, **env):
    """Start app.py on 127.0.0.1 in a process without the repository; return (process, url, log) once it answers."""
    shutil.copy(APP, cwd / "app.py")
    port, log = free_port(), cwd / "app.log"
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "HF_HOME": str(cwd / "hf_home"),
                 "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                 "GRADIO_TEMP_DIR": str(cwd / "gradio"), "NO_PROXY": "127.0.0.1,localhost",
                 "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1", **env}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", RUNNER, json.dumps(isolated_site_packages()),
             "--checkpoint", source, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + STARTUP_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the app exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return process, url, log
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the app did not answer within {STARTUP_S} s:\n{log.read_text()[-4000:]}")
    except BaseException:
        stop(process)
        raise


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(final, tmp_path_factory):
    """The app over the smoke checkpoint folder, killed when the module's tests are done."""
    process, url, log = start_app(str(final), tmp_path_factory.mktemp("app"))
    try:
        yield url, log
    finally:
        stop(process)


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def table(value) -> list:
    """The rows of a Dataframe as gradio_client returns it (`{"headers", "data", ...}`)."""
    return value["data"]


# The functions, in-process.
def test_search_by_title_word_and_by_id(checkpoint):
    tok = checkpoint.tokenizer
    item_id, title = next((i, t) for i, t in zip(tok.item_ids, tok.item_titles) if t)
    word = distinctive_word(title, tok.item_titles)
    rows, message = app.search(checkpoint, word.upper())  # case-insensitive
    assert [item_id, title, tok.render(item_id)] in rows
    assert all(word.lower() in row[1].lower() for row in rows)
    assert message == f"{len(rows)} item{'s' * (len(rows) != 1)} match {word.upper()!r}."
    rows, _ = app.search(checkpoint, item_id)  # the exact id comes first
    assert rows[0] == [item_id, title, tok.render(item_id)]


def test_search_caps_its_matches_and_says_so(checkpoint):
    total = sum("a" in t.lower() for t in checkpoint.tokenizer.item_titles)
    assert total > app.MAX_MATCHES
    rows, message = app.search(checkpoint, "A")
    assert len(rows) == app.MAX_MATCHES
    assert message == f"{total} items match 'A'; showing the first {app.MAX_MATCHES}."


def test_search_messages_for_nothing_typed_and_nothing_found(checkpoint):
    assert app.search(checkpoint, "  ") == ([], "Type part of a title, or an item id, to search the catalogue.")
    nothing = "Nothing matches 'zzqqxx': no title contains it and no item has that id."
    assert app.search(checkpoint, "zzqqxx") == ([], nothing)


def test_history_add_remove_and_their_messages(checkpoint, histories):
    first, second = histories[0][-2:]
    history, message = app.add_item(checkpoint, [], f" {first} ")
    assert history == [first] and message == f"Added {first} ({checkpoint.title(first)}): 1 item(s) in the history."
    history, _ = app.add_item(checkpoint, history, second)
    assert app.history_rows(checkpoint, history) == [[1, first, checkpoint.title(first)],
                                                      [2, second, checkpoint.title(second)]]
    unchanged, message = app.add_item(checkpoint, history, "B000NOTREAL")
    assert unchanged == history
    assert message == (f"Unknown item id 'B000NOTREAL': it is not in this checkpoint's catalogue of "
                       f"{checkpoint.tokenizer.num_items} items. Search by title to find an item's id.")
    assert app.add_item(checkpoint, history, "")[1] == ("Type an item id, or pick a search match, to add it to the "
                                                        "history.")
    assert app.remove_item(history, 3) == (history, "No item at position 3: the history holds 2 item(s).")
    assert app.remove_item(history, None) == (history, "Type the position (1 = oldest) of the item to remove.")
    assert app.remove_item(history, 1) == ([second], f"Removed item 1 ({first}).")


def test_recommend_rows_are_the_models_top_10_with_titles_ids_and_codes(checkpoint, histories):
    tok, model = checkpoint.tokenizer, checkpoint.model
    history = histories[0]
    rows = app.recommend_rows(checkpoint, history)
    with torch.no_grad():
        out = model.recommend(**tok([history], return_tensors="pt"), top_k=10)
    assert [r["rank"] for r in rows] == list(range(1, 11))
    assert [r["item_id"] for r in rows] == tok.decode_items(out.item_indices[0])
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), out.scores[0])
    for r in rows:
        index = tok.item_ids.index(r["item_id"])
        assert r["title"] == tok.item_titles[index] and r["title"]  # the real table has titles
        assert r["semantic_id"] == tok.render(r["item_id"])


def test_prefix_explanations_read_code_prefixes_json(checkpoint, final):
    prefixes = json.loads((final / app.PREFIXES_FILE).read_text())["prefixes"]
    tok = checkpoint.tokenizer
    item_id = tok.item_ids[0]
    codes, tokens = tok.item_codes[0].tolist(), tok.tokenize(item_id)
    lines = app.explain_prefixes(checkpoint, item_id)
    assert len(lines) == tok.num_codebooks - 1
    for length, line in enumerate(lines, start=1):
        entry = prefixes[",".join(map(str, codes[:length]))]
        assert entry["leaf_categories"], "smoke items carry categories"
        expected = ", ".join(f"{name} ({count} of {entry['num_items']})" for name, count in entry["leaf_categories"])
        assert line == "".join(tokens[:length]) + " → " + expected
        assert tok.render(item_id).startswith("".join(tokens[:length]))


def test_empty_history_and_unknown_item_are_refused_with_their_message(checkpoint):
    with pytest.raises(ValueError) as error:
        app.recommend_rows(checkpoint, [])
    assert str(error.value) == app.EMPTY_HISTORY
    with pytest.raises(ValueError, match=r"^Unknown item id 'B000NOTREAL': it is not in this checkpoint's catalogue"):
        app.recommend_rows(checkpoint, [checkpoint.tokenizer.item_ids[0], "B000NOTREAL"])


def test_retired_items_are_never_recommended(final, histories):
    fresh = app.load_checkpoint(final)  # its own model: retiring changes it
    top = [r["item_id"] for r in app.recommend_rows(fresh, histories[0])]
    fresh.model.retire_items(fresh.tokenizer, [top[0], top[2]])
    again = app.recommend_rows(fresh, histories[0])
    assert len(again) == 10 and {top[0], top[2]}.isdisjoint(r["item_id"] for r in again)
    assert [r["item_id"] for r in again[:8]] == [top[1]] + top[3:10]
    assert "(2 retired, never recommended)" in app.describe(fresh)


def test_checkpoint_without_titles_or_code_prefixes(final, histories, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(final, bare)
    (bare / app.PREFIXES_FILE).unlink()
    table = json.loads((bare / "semantic_ids.json").read_text())
    del table["titles"]
    (bare / "semantic_ids.json").write_text(json.dumps(table))
    checkpoint = app.load_checkpoint(bare)
    assert checkpoint.prefixes is None
    assert "has no titles: search by item id" in app.describe(checkpoint)
    assert f"ships no `{app.PREFIXES_FILE}`" in app.describe(checkpoint)
    assert app.search(checkpoint, "nail")[1] == "Nothing matches 'nail': no item has that id."
    item_id = histories[0][-1]
    assert app.search(checkpoint, item_id)[0] == [[item_id, item_id, checkpoint.tokenizer.render(item_id)]]
    rows = app.recommend_rows(checkpoint, histories[0])
    assert len(rows) == 10 and all(r["title"] == r["item_id"] for r in rows)
    unknown = f"this checkpoint ships no {app.PREFIXES_FILE}, so what its codes stand for is not known"
    assert all(r["prefixes"] == [unknown] for r in rows)


def test_code_prefixes_of_another_checkpoint_are_refused(tmp_path):
    (tmp_path / app.PREFIXES_FILE).write_text(json.dumps({"num_codebooks": 3, "prefixes": {}}))
    with pytest.raises(ValueError, match=r"code_prefixes.json does not describe this checkpoint's 4-level codes "
                                         r"\(num_codebooks=3\)"):
        app.load_prefixes(str(tmp_path), 4)


def test_no_checkpoint_given(monkeypatch, capsys):
    monkeypatch.delenv(app.CHECKPOINT_ENV, raising=False)
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "no checkpoint: pass --checkpoint DIR_OR_REPO_ID or set $QBERT4REC_CHECKPOINT" in capsys.readouterr().err
    monkeypatch.setenv(app.CHECKPOINT_ENV, "ORG/NAME")
    assert app.parse_args([]).checkpoint == "ORG/NAME"


# The app, as a user drives it.
def test_user_searches_adds_two_items_and_gets_the_top_10(server, checkpoint, histories):
    url, _ = server
    tok, user = checkpoint.tokenizer, client(url)
    assert set(user.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/search", "/add", "/remove", "/clear", "/recommend"}
    picked = []
    for item_id in histories[1][-2:]:  # a real user's last two items, found by a word of their titles
        word = distinctive_word(checkpoint.title(item_id), tok.item_titles)
        matches, message = user.predict(word, api_name="/search")
        rows = table(matches)
        assert message.startswith(f"{len(rows)} item") and rows
        assert all(word.lower() in title.lower() and semantic_id == tok.render(match_id)
                   for match_id, title, semantic_id in rows)
        match = next(row for row in rows if row[0] == item_id)
        assert match[1] == checkpoint.title(item_id)
        history, message = user.predict(match[0], api_name="/add")
        picked.append(item_id)
        assert [row[1] for row in table(history)] == picked
        assert message == f"Added {item_id} ({checkpoint.title(item_id)}): {len(picked)} item(s) in the history."

    top, message = user.predict(api_name="/recommend")
    rows = table(top)
    assert message == "Top 10 after 2 item(s), best first."
    assert table(top) and top["headers"] == app.RECOMMENDATION_HEADERS
    expected = app.recommend_rows(checkpoint, picked)
    assert [row[0] for row in rows] == list(range(1, 11))
    assert [row[2] for row in rows] == [r["item_id"] for r in expected]
    assert [row[1] for row in rows] == [tok.item_titles[tok.item_ids.index(row[2])] for row in rows]
    scores = [row[3] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert scores == [round(r["score"], 4) for r in expected]
    assert [row[4] for row in rows] == [tok.render(row[2]) for row in rows]
    for row in rows:
        lines = row[5].split("\n")
        assert len(lines) == tok.num_codebooks - 1
        assert all(line.startswith(tok.render(row[2])[: len(line.split(" → ")[0])]) and " of " in line
                   for line in lines)

    history, message = user.predict(1, api_name="/remove")
    assert [row[1] for row in table(history)] == picked[1:] and message == f"Removed item 1 ({picked[0]})."
    history, message = user.predict(api_name="/clear")
    assert table(history) == [] and message == "History cleared."


def test_user_sees_messages_for_an_empty_history_and_an_unknown_id(server, checkpoint):
    url, log = server
    user = client(url)  # a new session: its history is empty
    top, message = user.predict(api_name="/recommend")
    assert table(top) == [] and message == app.EMPTY_HISTORY
    history, message = user.predict("B000NOTREAL", api_name="/add")
    assert table(history) == []
    assert message == (f"Unknown item id 'B000NOTREAL': it is not in this checkpoint's catalogue of "
                       f"{checkpoint.tokenizer.num_items} items. Search by title to find an item's id.")
    matches, message = user.predict("zzqqxx", api_name="/search")
    assert table(matches) == [] and message.startswith("Nothing matches 'zzqqxx'")
    assert "Traceback" not in log.read_text()


def test_app_loads_a_hub_repo_id_from_the_offline_cache(final, checkpoint, histories, tmp_path):
    populate_hub_cache(tmp_path / "hub", final, REPO_ID, COMMIT)
    process, url, _ = start_app(REPO_ID, tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    try:
        user = client(url)
        user.predict(histories[0][-1], api_name="/add")
        top, _ = user.predict(api_name="/recommend")
    finally:
        stop(process)
    expected = app.recommend_rows(checkpoint, histories[0][-1:])
    assert [row[2] for row in table(top)] == [r["item_id"] for r in expected]
    assert [row[5] for row in table(top)] == ["\n".join(r["prefixes"]) for r in expected]  # code_prefixes.json came too


def test_code_prefixes_of_a_cached_repo_id_and_of_one_without_them(final, tmp_path, monkeypatch):
    from huggingface_hub import constants

    bare = tmp_path / "bare"
    shutil.copytree(final, bare, ignore=shutil.ignore_patterns(app.PREFIXES_FILE))
    populate_hub_cache(tmp_path / "hub", final, REPO_ID, COMMIT)
    populate_hub_cache(tmp_path / "hub", bare, REPO_ID + "-bare", COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no request leaves the machine
    shipped = json.loads((final / app.PREFIXES_FILE).read_text())
    assert app.load_prefixes(REPO_ID, shipped["num_codebooks"]) == shipped["prefixes"]
    assert app.load_prefixes(REPO_ID + "-bare", shipped["num_codebooks"]) is None
