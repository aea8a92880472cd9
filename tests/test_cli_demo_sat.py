"""basic_demo/cli_demo_sat.py end to end: answers equal the published implementation's greedy answers (cases.pt),
history and "clear" work, bad input is a one-line error that does not end the session, startup errors end it with a
one-line error and no traceback.

Most sessions run `main(argv)` in-process (stdin replaced, output captured by capsys); the subprocess tests run the
script as users do (a few seconds each, for importing torch/sat).
"""
from __future__ import annotations

import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sentencepiece
import torch
from conftest import HANG_TIMEOUT, checkpoint_copy

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "basic_demo" / "cli_demo_sat.py"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "cogvlm-tiny"
CHECKPOINT = FIXTURE / "checkpoint"
TOKENIZER = FIXTURE / "tokenizer.model"
IMAGE = FIXTURE / "image.png"
CAPTCHA = REPO_ROOT / "checkpoints" / "captcha-tiny" / "examples" / "3640.png"     # the embedded model reads "3640"
OTHER_IMAGE = REPO_ROOT / "tests" / "fixtures" / "cogagent-tiny" / "image.png"     # same picture, other path
FIXTURE_ARGS = ["--from_pretrained", str(CHECKPOINT), "--local_tokenizer", str(TOKENIZER)]

_CASES = torch.load(FIXTURE / "cases.pt", weights_only=False)["cases"]
_SP = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))


def case(name: str) -> dict:
    return _CASES[name]


def greedy_answer(name: str) -> str:
    """The published implementation's greedy answer: its new tokens, decoded and stripped."""
    return _SP.decode(_CASES[name]["generation"]["new_token_ids"]).strip()


def max_length(name: str) -> str:
    return str(_CASES[name]["generation"]["max_length"])


def lines(text: str) -> list[str]:
    return text.split("\n")      # not splitlines(): answers of a random model may hold \x1c, \x85, ...


def answers(stdout: str, prefix: str = "Model: ") -> list[str]:
    return [line[len(prefix):] for line in lines(stdout) if line.startswith(prefix)]


def errors(stderr: str, prefix: str = "Error: ") -> list[str]:
    return [line[len(prefix):] for line in lines(stderr) if line.startswith(prefix)]


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("cli_demo_sat_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chat():
    from cogvlm.utils.inference.chat import ChatModel

    return ChatModel.from_pretrained(CHECKPOINT, str(TOKENIZER))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))


@pytest.fixture
def run(cli, monkeypatch, capsys):
    """run(argv, stdin) -> (exit code, stdout, stderr) of main() in this process."""
    def run(argv, stdin=""):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def run_script(args, stdin=None, timeout=HANG_TIMEOUT):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO_ROOT, env=env,
                            input=stdin.encode() if stdin is not None else None,
                            stdin=None if stdin is not None else subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def larger_tokenizer(path: Path, extra: int = 8) -> Path:
    """The fixture tokenizer plus `extra` user-defined pieces: more tokens than the model's 512."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(TOKENIZER.read_bytes())
    for i in range(extra):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<extra_{i}>", 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    path.write_bytes(proto.SerializeToString())
    return path


# --- the script as users run it (subprocesses) ----------------------------------------------------------------


@pytest.mark.slow
def test_interactive_session_prints_published_greedy_answer():
    name = "chat_old_count"
    code, out, err = run_script([*FIXTURE_ARGS, "--max_length", max_length(name)],
                                stdin=f"{IMAGE}\n{case(name)['query']}\nstop\n")
    assert code == 0, err
    assert "[Language processor version]: chat_old" in out
    assert f"User: {case(name)['query']}" in out           # piped input is echoed
    assert answers(out) == [greedy_answer(name)]
    assert errors(err) == [] and "Traceback" not in err


@pytest.mark.slow
def test_one_shot_with_embedded_default_checkpoint_reads_captchas():
    """No --from_pretrained: checkpoints/captcha-tiny, trained with this pipeline, reads its example captchas
    (held-out test images, named by their text) — a real answer."""
    examples = sorted((REPO_ROOT / "checkpoints" / "captcha-tiny" / "examples").glob("*.png"))
    assert len(examples) >= 3
    for example in examples[:2]:
        code, out, err = run_script(["--image", example, "--query", "What text is written in the image?"])
        assert code == 0, err
        assert out == example.stem + "\n"           # the answer alone: library notices and status lines on stderr
        assert "[Language processor version]: chat_old" in err
        assert errors(err) == [] and "Traceback" not in err


@pytest.mark.slow
def test_startup_error_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
    code, out, err = run_script(["--from_pretrained", tmp_path / "no-such-checkpoint"], stdin="")
    assert code == 1
    assert "Traceback" not in err
    (problem,) = errors(err)
    assert "no-such-checkpoint" in problem and "not found" in problem
    assert "Welcome" not in out


@pytest.mark.slow
def test_two_processes_under_torchrun_answer_once_and_both_exit():
    """Rank 0 reads the piped input and broadcasts it; both ranks compute; only rank 0 prints; `stop` ends both
    (the timeout turns a hang into a failure)."""
    name = "chat_old_count"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(SCRIPT),
         *FIXTURE_ARGS, "--max_length", max_length(name)],
        cwd=REPO_ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=HANG_TIMEOUT,
        input=f"{IMAGE}\n{case(name)['query']}\nstop\n".encode())
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert answers(out) == [greedy_answer(name)]
    assert out.count("Welcome") == 1


@pytest.mark.slow
def test_under_torchrun_input_errors_keep_every_rank_going_and_startup_errors_end_them():
    """A missing image (read by rank 0 only, broadcast) is an error line and the session goes on at mp=2; a bad
    checkpoint ends both processes within the timeout with the user's one line: no traceback, and no
    ChildFailedError report from torchrun (which any non-zero exit of a rank would bring)."""
    name = "chat_old_count"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(SCRIPT)]
    result = subprocess.run([*command, *FIXTURE_ARGS, "--max_length", max_length(name)], cwd=REPO_ROOT, env=env,
                            capture_output=True, timeout=HANG_TIMEOUT,
                            input=f"/no/such/image.png\n{IMAGE}\n{case(name)['query']}\n".encode())   # then EOF
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert answers(result.stdout.decode()) == [greedy_answer(name)]
    assert errors(result.stderr.decode()) == ["image file not found: /no/such/image.png"]
    failed = subprocess.run([*command, "--from_pretrained", "/no/such/checkpoint"], cwd=REPO_ROOT, env=env,
                            capture_output=True, timeout=HANG_TIMEOUT, stdin=subprocess.DEVNULL)
    stderr = failed.stderr.decode()
    (problem,) = errors(stderr)
    assert "/no/such/checkpoint" in problem and "not found" in problem
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr and "FAILED" not in stderr
    assert failed.returncode == 0         # see Console.startup_failure_status: torchrun reports any other code
    assert "Welcome" not in failed.stdout.decode()


@pytest.mark.slow
def test_under_torchrun_a_group_size_that_does_not_divide_a_shard_is_one_line():
    """--quant 4 --quant_group_size 64 fits the fixture at mp=1 (input features 64, 128) but not its mp=2 shards
    (32): the user's one line names the model-parallel size, before any weight is read."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(SCRIPT), *FIXTURE_ARGS, "--quant", "4", "--quant_group_size", "64"],
                            cwd=REPO_ROOT, env=env, capture_output=True, timeout=HANG_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    (problem,) = errors(result.stderr.decode())
    assert "int4 group size 64 does not divide" in problem and "model-parallel size 2" in problem
    assert "Welcome" not in result.stdout.decode()


# --- Ctrl-C and terminals: a live process, its output read as it comes ------------------------------------------

WAIT = 240          # seconds to wait for an expected output marker: generous, a loaded machine only makes it slower
LONG_ANSWER = "1000"     # max_length: the random fixture model never stops early, so an answer runs this long


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)     # so Python in the child turns SIGINT into KeyboardInterrupt


class Output:
    """Everything a stream yields, collected by a thread; wait_for() blocks until a marker is there (or the stream
    has ended without it)."""

    def __init__(self, read_chunk):
        self.text, self.ended, self._changed = "", False, threading.Condition()
        threading.Thread(target=self._collect, args=(read_chunk,), daemon=True).start()

    def _collect(self, read_chunk):
        while chunk := read_chunk():
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, marker: str, count: int = 1) -> str:
        with self._changed:
            self._changed.wait_for(lambda: self.text.count(marker) >= count or self.ended, timeout=WAIT)
            if self.text.count(marker) < count:
                raise AssertionError(f"no {count} x {marker!r}; got: {self.text[-2000:]!r}")
            return self.text


READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}[os.uname().machine]


def wait_until_reading_stdin(pid: int) -> None:
    """Until the process is blocked in read(0, ...). A SIGINT sent between input()'s prompt and its read() would
    only be seen with the next input line (CPython checks signals between bytecodes, and a signal that arrives
    before the read() starts cannot interrupt it); a person at the prompt is never that fast, a test is."""
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{pid}/syscall").read_text().split()[:2] != [READ_SYSCALL, "0x0"]:
        assert time.monotonic() < deadline, f"process {pid} never waited for input"
        time.sleep(0.05)


def _start(args, **streams):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO_ROOT, env=env,
                            preexec_fn=_default_sigint, **streams)


def test_ctrl_c_stops_the_answer_and_at_the_prompt_ends_the_session():
    name = "chat_old_count"
    query = case(name)["query"]
    process = _start([*FIXTURE_ARGS, "--stream_chat", "--max_length", LONG_ANSWER],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = Output(lambda: process.stdout.read1(4096))
        err = Output(lambda: process.stderr.read1(4096))
        process.stdin.write(f"{IMAGE}\n{query}\n".encode())
        process.stdin.flush()
        out.wait_for("Model: ")                         # streamed: the answer has begun
        process.send_signal(signal.SIGINT)
        err.wait_for("(answer stopped")
        out.wait_for("User: ", count=2)                 # the prompt again, same image
        assert process.poll() is None

        process.stdin.write(f"{query}\n".encode())      # and the session still answers, in full this time
        process.stdin.flush()
        text = out.wait_for("User: ", count=3)
        stopped, full = (part.split("\nUser: ")[0] for part in text.split("Model: ")[1:3])
        assert full.startswith(greedy_answer(name))     # the published greedy answer, continued to max_length
        assert len(stopped) < len(full)                 # the first answer was cut short
        assert full.startswith(stopped.strip())

        wait_until_reading_stdin(process.pid)
        process.send_signal(signal.SIGINT)              # Ctrl-C at the prompt ends the session
        assert process.wait(timeout=WAIT) == 130
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in err.text and "KeyboardInterrupt" not in err.text
    assert errors(err.text) == []


def test_prompts_at_a_terminal_go_to_stdout():
    """At a terminal, input() without readline writes its prompt to stderr; the CLI's prompts go to stdout, where
    the answers are."""
    import pty

    terminal, child_end = pty.openpty()
    process = _start(FIXTURE_ARGS, stdin=child_end, stdout=child_end, stderr=subprocess.PIPE)
    os.close(child_end)

    def read_terminal():
        try:
            return os.read(terminal, 4096)
        except OSError:                 # EIO: the child closed the terminal
            return b""
    try:
        screen = Output(read_terminal)
        err = Output(lambda: process.stderr.read1(4096))
        screen.wait_for("Welcome")                   # printed just before the first prompt
        os.write(terminal, b"stop\n")
        assert process.wait(timeout=WAIT) == 0
        screen.wait_for("stop")                      # the terminal's echo of what was typed
    finally:
        process.kill()
        process.wait()
        os.close(terminal)
    assert "Please enter the image path or URL: " in screen.text
    assert "Please enter" not in err.text and "Traceback" not in err.text


# --- in-process sessions --------------------------------------------------------------------------------------


def test_stream_chat_prints_published_greedy_answer(run):
    name = "chat_old_count"
    code, out, err = run([*FIXTURE_ARGS, "--stream_chat", "--max_length", max_length(name)],
                         f"{IMAGE}\n\n{case(name)['query']}\nstop\n")
    assert code == 0
    assert answers(out) == [greedy_answer(name)]        # the failed (empty) query printed no "Model: " line
    assert len(errors(err)) == 1 and "empty" in errors(err)[0]


@pytest.mark.parametrize("name, checkpoint_version, extra_args, note", [
    # the checkpoint's text_processor_version overrides --version, and the CLI says so on stderr
    ("chat_describe", "chat", ["--version", "vqa"], "Note: the checkpoint's text_processor_version 'chat' "
                                                    "overrides --version vqa"),
    ("chat_describe", "chat", [], None),                  # --version not given: nothing to say
    ("chat_describe", "chat", ["--version", "chat"], None),      # given, and the same
    ("vqa_color", None, ["--version", "vqa"], None),      # no text_processor_version: --version is used
])
def test_prompt_template_version(run, tmp_path, name, checkpoint_version, extra_args, note):
    assert case(name)["version"] != "chat_old"
    checkpoint = checkpoint_copy(tmp_path, text_processor_version=checkpoint_version)
    code, out, err = run(["--from_pretrained", checkpoint, "--max_length", max_length(name), *extra_args],
                         f"{IMAGE}\n{case(name)['query']}\nstop\n")
    assert code == 0, err
    assert f"[Language processor version]: {case(name)['version']}" in out
    assert answers(out) == [greedy_answer(name)]
    notes = [line for line in lines(err) if line.startswith("Note: ")]
    assert notes == ([note] if note else [])


def test_history_is_used_and_clear_resets_it(run, chat, monkeypatch):
    """A random model never stops early, so its first answer fills max_length and the second turn's prompt (with
    that answer as history) cannot fit: the CLI says so, with the length of the prompt ChatModel builds from the
    history [(first query, first printed answer)]. A failed turn is not added to the history; "clear" drops it."""
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig

    prompts = []                       # (query, history) of every prompt the CLI asks ChatModel to build
    original_prompt = ChatModel.prompt

    def spy(self, query, history, image):
        prompts.append((query, [tuple(turn) for turn in history]))
        return original_prompt(self, query, history, image)

    monkeypatch.setattr(ChatModel, "prompt", spy)
    name = "chat_old_history"
    first, second = case(name)["history"][0][0], case(name)["query"]
    limit = int(max_length(name))
    code, out, err = run([*FIXTURE_ARGS, "--max_length", limit],
                         f"{IMAGE}\n{first}\n{second}\n{second}\nclear\n{IMAGE}\n{second}\nstop\n")
    assert code == 0, err
    a1, a3 = answers(out)
    assert prompts == [(first, []), (second, [(first, a1)]), (second, [(first, a1)]), (second, [])]

    monkeypatch.setattr(ChatModel, "prompt", original_prompt)
    image = chat.prepare_image(str(IMAGE))
    sampling = SamplingConfig(max_length=limit, top_k=1)
    assert a1 == chat.answer(first, [], image, sampling)
    with_history = len(chat.prompt(second, [(first, a1)], image))
    fresh = len(chat.prompt(second, [], image))
    assert fresh < limit <= with_history
    too_long = f"the prompt is {with_history} tokens"
    assert [problem[:len(too_long)] for problem in errors(err)] == [too_long, too_long]
    assert a3 == chat.answer(second, [], image, sampling)            # "clear" started over without history


def test_bad_input_is_a_one_line_error_and_the_session_goes_on(run, chat, tmp_path):
    from cogvlm.utils.inference.generation import SamplingConfig

    a_directory = tmp_path / "folder.png"
    a_directory.mkdir()
    text_file = tmp_path / "x.png"
    text_file.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(IMAGE.read_bytes()[:200])
    too_long = case("chat_old_count")["query"]            # 34 prompt tokens; "Hi" is 25

    stdin = "\n".join([
        "",                                   # no image given
        str(tmp_path / "missing.png"),
        str(a_directory),
        str(text_file),
        str(truncated),
        "http://127.0.0.1:9/x.png",           # nothing listens on the discard port
        str(IMAGE),
        "",                                   # empty query
        too_long,
        "Hi",
        "clear",
        str(OTHER_IMAGE),
        "Hi",
    ]) + "\n"                                 # then end of input, without "stop"
    code, out, err = run([*FIXTURE_ARGS, "--max_length", 30], stdin)
    assert code == 0

    problems = errors(err)
    expected = ["no image path or URL given", "image file not found", "got a directory", "not a supported image",
                "cannot decode image", "cannot connect", "the query is empty", "max_length 30"]
    assert len(problems) == len(expected), problems
    for problem, words in zip(problems, expected):
        assert words in problem
    assert "Traceback" not in err
    assert out.count("Please enter the image path or URL: ") == 8

    sampling = SamplingConfig(max_length=30, top_k=1)
    assert answers(out) == [chat.answer("Hi", [], chat.prepare_image(str(IMAGE)), sampling),
                            chat.answer("Hi", [], chat.prepare_image(str(OTHER_IMAGE)), sampling)]


def test_end_of_input_at_the_first_prompt_exits_cleanly(run):
    code, out, err = run(FIXTURE_ARGS, "")
    assert code == 0
    assert "Welcome" in out and errors(err) == []


def test_one_shot_errors(run, tmp_path):
    code, out, err = run([*FIXTURE_ARGS, "--image", tmp_path / "missing.png", "--query", "Hi"])
    assert code == 1 and len(errors(err)) == 1 and "image file not found" in errors(err)[0]
    code, out, err = run([*FIXTURE_ARGS, "--image", IMAGE, "--query", "Hi", "--max_length", 20])
    assert code == 1 and len(errors(err)) == 1 and "max_length 20" in errors(err)[0]


def _no_config(tmp_path):
    checkpoint = checkpoint_copy(tmp_path)
    (checkpoint / "model_config.json").unlink()
    return ["--from_pretrained", checkpoint], "model_config.json is missing"


def _bad_json(tmp_path):
    checkpoint = checkpoint_copy(tmp_path)
    (checkpoint / "model_config.json").write_text("{not json")
    return ["--from_pretrained", checkpoint], "not valid JSON"


def _dangling_latest(tmp_path):
    checkpoint = checkpoint_copy(tmp_path)
    (checkpoint / "latest").write_text("7")
    return ["--from_pretrained", checkpoint], "points to '7'"


def _missing_folder(tmp_path):
    return ["--from_pretrained", tmp_path / "nowhere"], "not found"


def _missing_tokenizer(tmp_path):
    checkpoint = checkpoint_copy(tmp_path, tokenizer=None)          # so that --local_tokenizer matters
    missing = tmp_path / "no-such" / "tokenizer.model"
    return ["--from_pretrained", checkpoint, "--local_tokenizer", missing], str(missing)


def _larger_tokenizer(tmp_path):
    checkpoint = checkpoint_copy(tmp_path, tokenizer=None)
    tokenizer = larger_tokenizer(tmp_path / "big.model")
    return ["--from_pretrained", checkpoint, "--local_tokenizer", tokenizer], "has 520 tokens"


@pytest.mark.parametrize("setup", [_missing_folder, _no_config, _bad_json, _dangling_latest, _missing_tokenizer,
                                   _larger_tokenizer])
def test_startup_errors(run, tmp_path, setup):
    argv, words = setup(tmp_path)
    code, out, err = run(argv, f"{IMAGE}\nHi\nstop\n")
    assert code == 1
    (problem,) = errors(err)
    assert words in problem
    assert "Welcome" not in out and "Traceback" not in err


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_reads_the_embedded_captcha(run, bits):
    """--quant 8/4 load the embedded captcha reader quantised, and it still reads its example captcha."""
    example = REPO_ROOT / "checkpoints" / "captcha-tiny" / "examples" / "0695.png"
    code, out, err = run(["--quant", bits, "--image", example, "--query", "What text is written in the image?"])
    assert code == 0, err
    assert out == "0695\n"
    assert errors(err) == []


@pytest.mark.parametrize("flags", [["--fp16"], ["--bf16", "--prefill_dtype", "fp32"]])
def test_half_precision_reads_the_embedded_captcha(run, flags):
    """--fp16 (the published flag) and --bf16 end to end on CPU (a per-tensor cast while loading, prefill,
    decode), here with either prefill dtype: the embedded captcha reader still reads its example."""
    code, out, err = run([*flags, "--image", CAPTCHA, "--query", "What text is written in the image?"])
    assert code == 0, err
    assert out == "3640\n"


def test_compile_runs_the_decode_steps_compiled(run, monkeypatch):
    """--compile reaches generation (the compiled step itself is tests/test_compile.py's: a minute to compile)."""
    from cogvlm.utils.inference import generation

    calls = []
    monkeypatch.setattr(generation, "compiled_decode_step",
                        lambda *args: (calls.append(args[3].static), generation.decode_one_token(*args))[1])
    code, out, err = run(["--compile", "--image", CAPTCHA, "--query", "What text is written in the image?"])
    assert code == 0, err
    assert out == "3640\n" and calls and all(calls)                # every step, over a static cache


@pytest.mark.parametrize("argv", [["--image", IMAGE], ["--query", "Hi"]])
def test_image_and_query_go_together(cli, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(arg) for arg in argv])
    assert exit_.value.code == 2
    assert "--image and --query go together" in capsys.readouterr().err


@pytest.mark.parametrize("fixture", ["cogvlm-tiny", "cogagent-tiny"])
def test_cogvlm_and_cogagent_18b_still_need_an_image(cli, run, capsys, fixture):
    """As in the published demo, CogVLM and CogAgent-18B chat about an image: --query alone is a usage error and
    an empty image line an error (the 9B models chat without one: test_cli_glm4.py)."""
    folder = REPO_ROOT / "tests" / "fixtures" / fixture
    args = ["--from_pretrained", folder / "checkpoint", "--local_tokenizer", folder / "tokenizer.model"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(arg) for arg in [*args, "--query", "Hi"]])
    assert exit_.value.code == 2
    assert "--image and --query go together" in capsys.readouterr().err
    code, out, err = run(args, stdin="\nstop\n")
    assert code == 0
    assert errors(err) == ["no image path or URL given"]
    assert out.count("Please enter the image path or URL: ") == 2 and "plain text" not in out


def test_chinese_interface(run, tmp_path):
    name = "chat_old_count"
    code, out, err = run([*FIXTURE_ARGS, "--chinese", "--max_length", max_length(name)],
                         f"{tmp_path / 'missing.png'}\n{IMAGE}\n{case(name)['query']}\nstop\n")
    assert code == 0
    assert "欢迎使用 CogVLM / CogAgent 命令行" in out
    assert "[语言处理器版本]：chat_old" in out
    assert "请输入图像路径或URL： " in out
    assert f"用户：{case(name)['query']}" in out
    assert answers(out, "模型：") == [greedy_answer(name)]
    assert "Model: " not in out
    assert len(errors(err, "错误：")) == 1 and "Error: " not in err


def test_chinese_errors_say_what_failed_and_keep_the_detail(run, tmp_path):
    too_long = case("chat_old_count")["query"]            # 34 prompt tokens: too long for --max_length 30
    code, out, err = run([*FIXTURE_ARGS, "--chinese", "--max_length", 30],
                         f"{tmp_path / 'missing.png'}\n{IMAGE}\n\n{too_long}\nstop\n")
    assert code == 0
    missing, empty, long_prompt = errors(err, "错误：")
    assert missing == f"无法读取图像：image file not found: {tmp_path / 'missing.png'}"
    assert empty == "问题为空，请输入问题或指令"
    assert long_prompt.startswith("输入过长：the prompt is ")
    assert "Error: " not in err


@pytest.mark.parametrize("setup, wording", [(_missing_folder, "无法加载检查点："), (_bad_json, "无法加载检查点："),
                                            (_missing_tokenizer, "分词器不可用："), (_larger_tokenizer, "分词器不可用：")])
def test_chinese_startup_errors(run, tmp_path, setup, wording):
    argv, words = setup(tmp_path)
    code, out, err = run(["--chinese", *argv])
    assert code == 1
    (problem,) = errors(err, "错误：")
    assert problem.startswith(wording) and words in problem


def test_chinese_usage_errors(cli, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--chinese", "--image", str(IMAGE)])
    assert "--image 与 --query 须同时给出" in capsys.readouterr().err


# --- CogAgent ---------------------------------------------------------------------------------------------------


def test_cogagent_checkpoint_feeds_the_cross_image_automatically(run):
    """The CLI sees model_class CogAgentModel and prepares the image at cross_image_pix (112 in the fixture) as
    well; the answer is the published CogAgent implementation's greedy answer."""
    fixture = REPO_ROOT / "tests" / "fixtures" / "cogagent-tiny"
    cases = torch.load(fixture / "cases.pt", weights_only=False)["cases"]
    name = "chat_describe"
    expected = _SP.decode(cases[name]["generation"]["new_token_ids"]).strip()
    code, out, err = run(["--from_pretrained", fixture / "checkpoint", "--local_tokenizer", fixture / "tokenizer.model",
                          "--max_length", cases[name]["generation"]["max_length"]],
                         stdin=f"{fixture / 'image.png'}\n{cases[name]['query']}\nstop\n")
    assert code == 0, err
    assert "[Language processor version]: chat" in out
    assert answers(out) == [expected]


def test_answer_with_boxes_is_drawn_and_its_png_path_printed(run, monkeypatch, tmp_path):
    """The random-weight model never writes boxes, so the answer is stubbed; the CLI's drawing path is real."""
    from PIL import Image

    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.grounding.boxes import BOX_COLORS

    monkeypatch.setattr(ChatModel, "answer", lambda *a, **k: "The red square [[000,000,500,500]] is there.")
    code, out, err = run([*FIXTURE_ARGS, "--output_dir", tmp_path / "drawn"],
                         stdin=f"{IMAGE}\nWhere is the red square?\nAnd now?\nstop\n")
    assert code == 0, err
    drawn = [line.removeprefix("Boxes drawn: ") for line in lines(out) if line.startswith("Boxes drawn: ")]
    assert drawn == [str(tmp_path / "drawn" / "answer_1.png"), str(tmp_path / "drawn" / "answer_2.png")]
    picture = Image.open(drawn[0]).convert("RGB")
    assert picture.size == Image.open(IMAGE).size                  # drawn on the original image, not the 56 px input
    assert picture.getpixel((picture.width // 2 - 1, picture.height // 2 - 4)) == tuple(BOX_COLORS[0])   # right edge, below the label


def test_answer_without_boxes_draws_nothing(run, tmp_path):
    code, out, err = run([*FIXTURE_ARGS, "--output_dir", tmp_path / "drawn", "--max_length", "40"],
                         stdin=f"{IMAGE}\nHow many?\nstop\n")
    assert code == 0, err
    assert "Boxes drawn" not in out and not (tmp_path / "drawn").exists()
