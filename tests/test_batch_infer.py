"""basic_demo/batch_infer.py on the embedded captcha reader: the answers are the CLI's (and the captchas' own text),
bad files get an error line while the others finish, a second run does not redo what is done, an interrupted or
killed run leaves whole lines and resumes, --input JSON lines work, and --batch_size does not change the answers.

Most runs call `main(argv)` in-process; the interruption tests run the script as users do and stop it while it
waits on a named pipe standing in for an image, a point it reaches after writing exactly two lines.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "basic_demo" / "batch_infer.py"
CAPTCHA = REPO_ROOT / "checkpoints" / "captcha-tiny"
EXAMPLES = CAPTCHA / "examples"             # each named by its text: 0695.png, 3640.png, 6631.png
QUERY = "What text is written in the image?"


@pytest.fixture(scope="module")
def batch_infer():
    from cogvlm.basic_demo import batch_infer

    assert Path(batch_infer.__file__).resolve() == SCRIPT           # the script beside these tests
    return batch_infer


@pytest.fixture(scope="module")
def chat():
    from cogvlm.utils.inference.chat import ChatModel

    return ChatModel.from_pretrained(CAPTCHA)


def cli_answer(chat, path: Path, query: str = QUERY, max_length: int = 2048) -> str:
    """What the CLI's one-shot mode answers (ChatModel.answer with the CLI's default sampling)."""
    from cogvlm.utils.inference.generation import SamplingConfig

    return chat.answer(query, [], chat.prepare_image(str(path)), SamplingConfig(max_length=max_length))


def examples(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in EXAMPLES.glob("*.png"):
        shutil.copy(path, folder / path.name)
    return folder


def records(path: Path) -> list[dict]:
    data = path.read_text(encoding="utf-8")
    assert data.endswith("\n")
    return [json.loads(line) for line in data.split("\n")[:-1]]


def by_image(path: Path) -> dict[str, dict]:
    found = records(path)
    assert len({(r["image"], r["query"]) for r in found}) == len(found), "an item has two lines"
    return {r["image"]: r for r in found}


def run(module, capsys, *argv) -> tuple[int, str, str]:
    status = module.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    return [line.split("Error: ", 1)[1] for line in stderr.split("\n") if "Error: " in line]


# --- one run --------------------------------------------------------------------------------------------------


def test_a_folder_gets_the_clis_answers_and_bad_files_are_reported_and_skipped(batch_infer, chat, capsys, tmp_path):
    folder = examples(tmp_path / "images")
    (folder / "corrupt.png").write_bytes((EXAMPLES / "3640.png").read_bytes()[:300])     # cut short
    (folder / "fake.jpg").write_text("not a picture")
    (folder / "notes.txt").write_text("not an image by its name")
    output = tmp_path / "out.jsonl"
    status, out, err = run(batch_infer, capsys, "--images", folder, "--query", QUERY, "--output", output,
                           "--batch_size", 4)
    assert status == 0, err
    lines = by_image(output)
    assert set(lines) == {"0695.png", "3640.png", "6631.png", "corrupt.png", "fake.jpg"}
    for name in ("0695.png", "3640.png", "6631.png"):
        assert lines[name] == {"image": name, "query": QUERY, "answer": Path(name).stem, "finish_reason": "stop"}
        assert lines[name]["answer"] == cli_answer(chat, folder / name)
    assert "truncated" in lines["corrupt.png"]["error"] and "not a supported image" in lines["fake.jpg"]["error"]
    assert sorted(error_lines(err)) == sorted(f"{name}: {lines[name]['error']}" for name in ("corrupt.png", "fake.jpg"))
    assert "notes.txt" in err and "Traceback" not in err
    assert "3 answered, 2 failed" in out and "images/s" in out and "tokens/s" in out


def test_batch_size_1_and_4_give_the_same_answers(batch_infer, chat, capsys, tmp_path):
    from cogvlm.finetune_demo.make_captcha_dataset import generate

    folder = tmp_path / "captchas"
    paths = generate(folder, count=10, seed=11)
    answers = {}
    for batch_size in (1, 4):
        output = tmp_path / f"batch{batch_size}.jsonl"
        status, _, err = run(batch_infer, capsys, "--images", folder, "--query", QUERY, "--output", output,
                             "--batch_size", batch_size)
        assert status == 0, err
        answers[batch_size] = {name: line["answer"] for name, line in by_image(output).items()}
    assert answers[1] == answers[4] == {path.name: cli_answer(chat, path) for path in paths}


def test_input_jsonl_resolves_relative_paths_against_its_folder(batch_infer, chat, capsys, tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    examples(jobs / "pictures")
    other_query = "Read the captcha."
    lines = [{"image": "pictures/3640.png", "query": QUERY},
             {"image": str(EXAMPLES / "0695.png"), "query": QUERY},                 # absolute
             {"image": "pictures/3640.png", "query": other_query},                  # same image, other query
             {"image": "pictures/6631.png"},                                        # takes --query
             {"image": "pictures/missing.png", "query": QUERY},
             {"image": "pictures/3640.png", "query": QUERY}]                        # a repeat: done once
    (jobs / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    monkeypatch.chdir(tmp_path)                     # relative to in.jsonl, not to the working folder
    # --max_length 120: a query the captcha reader was not trained on may not end before it.
    status, out, err = run(batch_infer, capsys, "--input", jobs / "in.jsonl", "--query", QUERY,
                           "--output", "out.jsonl", "--batch_size", 2, "--max_length", 120)
    assert status == 0, err
    found = {(r["image"], r["query"]): r for r in records(tmp_path / "out.jsonl")}
    assert len(found) == 5 == len(records(tmp_path / "out.jsonl"))
    assert found[("pictures/3640.png", QUERY)]["answer"] == "3640"
    assert found[(str(EXAMPLES / "0695.png"), QUERY)]["answer"] == "0695"
    assert found[("pictures/6631.png", QUERY)]["answer"] == "6631"
    assert found[("pictures/3640.png", other_query)]["answer"] == cli_answer(chat, EXAMPLES / "3640.png",
                                                                               other_query, max_length=120)
    assert found[("pictures/missing.png", QUERY)]["error"].startswith("image file not found")
    assert "1 repeated" in err and "4 answered, 1 failed" in out


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "line 2 is not JSON"),
    ('["a.png", "hi"]', "line 2: expected an object"),
    ('{"query": "hi"}', 'line 2: "image" must be'),
    ('{"image": "a.png"}', 'line 2: "query" must be'),
])
def test_a_bad_input_line_is_a_one_line_error_before_anything_runs(batch_infer, capsys, tmp_path, line, fragment):
    (tmp_path / "in.jsonl").write_text(json.dumps({"image": "a.png", "query": "hi"}) + "\n" + line + "\n")
    status, _, err = run(batch_infer, capsys, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl")
    assert status == 1
    assert len(error_lines(err)) == 1 and fragment in error_lines(err)[0], err
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_folders_and_output_files_are_one_line_errors(batch_infer, capsys, tmp_path):
    status, _, err = run(batch_infer, capsys, "--images", tmp_path / "nowhere", "--query", QUERY,
                         "--output", tmp_path / "out.jsonl")
    assert status == 1 and error_lines(err) == [f"--images {tmp_path / 'nowhere'}: not a folder"]
    (tmp_path / "empty").mkdir()
    status, _, err = run(batch_infer, capsys, "--images", tmp_path / "empty", "--query", QUERY,
                         "--output", tmp_path / "out.jsonl")
    assert status == 1 and error_lines(err) == [f"--images {tmp_path / 'empty'}: no images there"]
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"image": "a.png", "query": "q", "answer": "a"}\nsome notes\n{"image": "b.png"}\n')
    status, _, err = run(batch_infer, capsys, "--images", examples(tmp_path / "images"), "--query", QUERY,
                         "--output", foreign)
    assert status == 1 and len(error_lines(err)) == 1 and "line 2 is not a line this script writes" in err


def test_a_failure_inside_the_model_is_a_one_line_error(batch_infer, capsys, tmp_path, monkeypatch):
    from cogvlm.utils.inference.chat import ChatModel

    def failing(self, requests, num_slots, max_length):
        next(iter(requests))
        raise RuntimeError("a kernel failed\non two lines")
        yield

    monkeypatch.setattr(ChatModel, "stream_requests", failing)
    status, _, err = run(batch_infer, capsys, "--images", examples(tmp_path / "images"), "--query", QUERY,
                         "--output", tmp_path / "out.jsonl")
    assert status == 1 and "Traceback" not in err
    assert error_lines(err) == [(f"a kernel failed on two lines (0 answered, 0 failed in this run are in "
                                 f"{tmp_path / 'out.jsonl'}; run the same command again to go on)")]


def test_a_write_error_is_a_one_line_error(batch_infer, capsys, tmp_path, monkeypatch):
    def full(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch_infer.LineWriter, "write", full)
    status, _, err = run(batch_infer, capsys, "--images", examples(tmp_path / "images"), "--query", QUERY,
                         "--output", tmp_path / "out.jsonl")
    assert status == 1 and "Traceback" not in err
    assert error_lines(err) == [f"cannot write --output {tmp_path / 'out.jsonl'}: No space left on device"]
    status, _, err = run(batch_infer, capsys, "--images", tmp_path / "images", "--query", QUERY, "--output", "/dev/null")
    assert status == 1 and error_lines(err) == ["--output /dev/null: not a regular file"]


@pytest.mark.parametrize("argv", [["--images", "d", "--input", "i.jsonl", "--query", "q", "--output", "o"],
                                  ["--images", "d", "--output", "o"],
                                  ["--images", "d", "--query", "q"],
                                  ["--images", "d", "--query", "q", "--output", "o", "--batch_size", "0"]])
def test_flag_errors_are_usage_errors(batch_infer, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        batch_infer.main(argv)
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_help_imports_nothing_heavy():
    from test_startup import heavy_roots, imported_modules

    result, modules = imported_modules(str(SCRIPT), "--help")
    assert result.returncode == 0 and "--batch_size" in result.stdout and "--retry_errors" in result.stdout
    assert not heavy_roots(modules)


def test_a_folder_lists_its_images_by_extension_and_subfolders_only_when_recursive(batch_infer, tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt", ".hidden.png", "sub/c.webp", ".cache/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")                  # listing goes by name; reading comes later
    items, others = batch_infer.folder_items(tmp_path, "q")
    assert [item.image for item in items] == ["a.jpg", "b.PNG"] and others == ["notes.txt"]
    assert items[0] == batch_infer.Item("a.jpg", str(tmp_path / "a.jpg"), "q")
    items, _ = batch_infer.folder_items(tmp_path, "q", recursive=True)
    assert [item.image for item in items] == ["a.jpg", "b.PNG", "sub/c.webp"]


def test_an_answer_with_boxes_carries_them(batch_infer):
    item = batch_infer.Item("dog.png", "/x/dog.png", "Where is the dog?")
    record = batch_infer.answer_record(item, "A dog[[086,540,400,760]] and a cat[[1,2,3,4;500,500,600,600]].",
                                       "stop")
    assert record["boxes"] == [[86, 540, 400, 760], [1, 2, 3, 4], [500, 500, 600, 600]]
    assert "boxes" not in batch_infer.answer_record(item, "No dog here.", "stop")


# --- resuming -------------------------------------------------------------------------------------------------


def test_a_second_run_does_not_redo_done_items_and_retries_errors_only_when_asked(batch_infer, capsys, tmp_path):
    folder = examples(tmp_path / "images")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    output = tmp_path / "out.jsonl"
    argv = ["--images", folder, "--query", QUERY, "--output", output, "--batch_size", 2]
    assert run(batch_infer, capsys, *argv)[0] == 0
    first = output.read_bytes()
    # Done items would now fail if they were done again: 0695.png is gone, 3640.png is unreadable.
    (folder / "0695.png").unlink()
    (folder / "3640.png").write_bytes(b"garbage")
    shutil.copy(EXAMPLES / "6631.png", folder / "new.png")
    status, out, err = run(batch_infer, capsys, *argv)
    assert status == 0 and "1 answered, 0 failed" in out
    assert "2 item(s) already answered, 1 with an earlier error" in err and not error_lines(err)
    assert output.read_bytes().startswith(first)
    assert [r["image"] for r in records(output)[4:]] == ["new.png"] and records(output)[4]["answer"] == "6631"
    # An error is not retried by a plain rerun; --retry_errors replaces its line.
    shutil.copy(EXAMPLES / "3640.png", folder / "corrupt.png")
    status, out, _ = run(batch_infer, capsys, *argv)
    assert status == 0 and out.startswith("Nothing to do")
    status, out, _ = run(batch_infer, capsys, *argv, "--retry_errors")
    assert status == 0 and "1 answered, 0 failed" in out
    lines = by_image(output)
    assert len(lines) == 5 and lines["corrupt.png"]["answer"] == "3640"
    assert not any("error" in line for line in lines.values())


def test_a_torn_last_line_is_dropped_and_its_item_done_again(batch_infer, capsys, tmp_path):
    folder = examples(tmp_path / "images")
    output = tmp_path / "out.jsonl"
    argv = ["--images", folder, "--query", QUERY, "--output", output]
    assert run(batch_infer, capsys, *argv)[0] == 0
    whole = output.read_bytes().split(b"\n")
    for torn in (whole[2][:25], whole[2][:25] + b"\n"):         # cut short with or without its newline
        output.write_bytes(b"\n".join(whole[:2]) + b"\n" + torn)
        status, out, err = run(batch_infer, capsys, *argv)
        assert status == 0 and "Dropped the last line" in err and "1 answered" in out
        assert {name: line["answer"] for name, line in by_image(output).items()} == {
            "0695.png": "0695", "3640.png": "3640", "6631.png": "6631"}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_interrupted_run_leaves_whole_lines_and_the_next_run_finishes_the_job(batch_infer, capsys, tmp_path,
                                                                                  stop):
    pictures = examples(tmp_path / "pictures")
    os.mkfifo(pictures / "blocked.png")         # reading it waits until a writer comes: the run stops there
    items = ["0695.png", "3640.png", "blocked.png", "6631.png"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"image": f"pictures/{name}", "query": QUERY}) + "\n"
                                               for name in items))
    output = tmp_path / "out.jsonl"
    argv = ["--input", tmp_path / "in.jsonl", "--output", output, "--batch_size", 1]
    process = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while not (output.exists() and output.read_bytes().count(b"\n") == 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.05)
        process.send_signal(stop)
        _, err = process.communicate(timeout=HANG_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "Interrupted" in err and "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    assert [r["image"] for r in records(output)] == ["pictures/0695.png", "pictures/3640.png"]
    # Resume with the pipe replaced by a picture, and the two done pictures gone (doing them again would fail).
    (pictures / "blocked.png").unlink()
    shutil.copy(EXAMPLES / "3640.png", pictures / "blocked.png")
    (pictures / "0695.png").unlink()
    (pictures / "3640.png").unlink()
    status, out, err = run(batch_infer, capsys, *argv)
    assert status == 0 and "2 answered, 0 failed" in out, err
    assert {name: line["answer"] for name, line in by_image(output).items()} == {
        "pictures/0695.png": "0695", "pictures/3640.png": "3640", "pictures/blocked.png": "3640",
        "pictures/6631.png": "6631"}
