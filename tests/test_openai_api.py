"""openai_demo/openai_api.py: the OpenAI-compatible server, on 127.0.0.1 with the embedded captcha model, through
the official `openai` client (and raw HTTP where the client would hide the wire format). Two servers per module:
a roomy one (4 slots) and a small one (1 slot, a queue of 1) for the capacity and cancellation tests.

The captcha model's answers are known: it reads the text of each example image (its file name), and the CLI prints
that answer (tested here for 3640.png). It is no GUI agent: the agent extension's tests check the query it builds and
that its answers are reported as unparsed steps; parsed steps are checked without a model."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from cogvlm.openai_demo.local_server import health, running_server
from conftest import HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "checkpoints" / "captcha-tiny" / "examples"
IMAGES = sorted(EXAMPLES.glob("*.png"))
QUERY = "What text is written in the image?"
CONTEXT = 1024              # the roomy server's --max_length
# The small server's: its long answers (~8000 tokens, many seconds even on a fast CPU) outlast any of its tests,
# which close them; a request that ran to its end would show as "length" in /health.
SMALL_CONTEXT = 8192
MAX_IMAGE_MB = 1
LONG = {"max_tokens": SMALL_CONTEXT - 200, "extra_body": {"ignore_eos": True}}   # runs until cancelled


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(image: Path | str | None = None, query: str = QUERY) -> list[dict]:
    content = [{"type": "text", "text": query}]
    if image is not None:
        url = image if isinstance(image, str) else data_url(image)
        content.append({"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": content}]


def client(base_url: str) -> openai.OpenAI:
    # No retries: a 429 must reach the test, not be retried by the client.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=HANG_TIMEOUT)


def wait_for(condition, what: str):
    """Poll until condition() is truthy; HANG_TIMEOUT only turns a hang into a failure (no speed is expected)."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def idle(base_url: str) -> bool:
    state = health(base_url)
    return state["busy_slots"] == 0 and state["queued"] == 0 and state["in_flight"] == 0


@pytest.fixture(scope="module")
def server():
    with running_server("--num_slots", "4", "--max_queue", "32", "--max_length", str(CONTEXT),
                        "--max_image_mb", str(MAX_IMAGE_MB), timeout=HANG_TIMEOUT) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def small_server():
    with running_server("--num_slots", "1", "--max_queue", "1", "--max_length", str(SMALL_CONTEXT),
                        "--allow_image_urls", timeout=HANG_TIMEOUT) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def cli_answer():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "basic_demo" / "cli_demo_sat.py"), "--image",
                             str(EXAMPLES / "3640.png"), "--query", QUERY], capture_output=True, text=True,
                            timeout=HANG_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def streamed(base_url: str, image: Path, **options) -> tuple[str, list]:
    chunks = list(client(base_url).chat.completions.create(model="captcha-tiny", messages=ask(image), stream=True,
                                                           **options))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# --- answers -------------------------------------------------------------------------------------------------------

def test_plain_and_streamed_answers_equal_the_cli(server, cli_answer):
    assert cli_answer == "3640"
    response = client(server).chat.completions.create(model="captcha-tiny", messages=ask(EXAMPLES / "3640.png"))
    assert response.object == "chat.completion"
    assert response.choices[0].message.content == cli_answer
    assert response.choices[0].finish_reason == "stop"
    text, chunks = streamed(server, EXAMPLES / "3640.png")
    assert text == cli_answer
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_the_sse_stream_is_openai_chunks_ending_with_done(server):
    body = {"model": "m", "messages": ask(EXAMPLES / "0695.png"), "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=HANG_TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(line[len("data: "):])["choices"][0]["delta"].get("content", "") for line in events[:-1]]
    assert "".join(pieces) == "0695"


def test_usage_counts_the_prompt_and_the_answer(server):
    chat = client(server).chat.completions
    response = chat.create(model="m", messages=ask(EXAMPLES / "3640.png"), max_tokens=3,
                           extra_body={"ignore_eos": True})
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3
    newer_name = chat.create(model="m", messages=ask(EXAMPLES / "3640.png"), max_completion_tokens=2,
                             extra_body={"ignore_eos": True})
    assert newer_name.usage.completion_tokens == 2
    assert response.usage.total_tokens == response.usage.prompt_tokens + 3
    longer = chat.create(model="m", messages=ask(EXAMPLES / "3640.png", QUERY + " Read it carefully."), max_tokens=1)
    assert longer.usage.prompt_tokens > response.usage.prompt_tokens
    _, chunks = streamed(server, EXAMPLES / "3640.png", max_tokens=3, extra_body={"ignore_eos": True},
                         stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == response.usage.model_dump()


def test_a_stop_sequence_ends_the_answer_before_it(server):
    response = client(server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"), stop=["40"])
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == ("36", "stop")
    text, chunks = streamed(server, EXAMPLES / "3640.png", stop="4")
    assert text == "36" and chunks[-1].choices[0].finish_reason == "stop"


def test_a_seed_makes_sampling_repeatable(server):
    def sample(seed):
        return client(server).chat.completions.create(
            model="m", messages=ask(EXAMPLES / "6631.png"), temperature=1.5, seed=seed, max_tokens=12,
            extra_body={"ignore_eos": True}).choices[0].message.content

    first = sample(7)
    assert sample(7) == first


def test_a_vanishing_temperature_is_greedy(server):
    response = client(server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"),
                                                      temperature=1e-40)
    assert response.choices[0].message.content == "3640"


def test_history_is_part_of_the_prompt(server):
    messages = [{"role": "system", "content": "You read captchas."}, *ask(EXAMPLES / "3640.png"),
                {"role": "assistant", "content": "3640"}, {"role": "user", "content": "And again?"}]
    response = client(server).chat.completions.create(model="m", messages=messages, max_tokens=1)
    alone = client(server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png", "And again?"),
                                                   max_tokens=1)
    assert response.usage.prompt_tokens > alone.usage.prompt_tokens


def test_twenty_concurrent_streams_answer_as_one_at_a_time(server):
    one_at_a_time = {image: streamed(server, image)[0] for image in IMAGES}
    assert one_at_a_time == {image: image.stem for image in IMAGES}
    images = [IMAGES[i % len(IMAGES)] for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda image: streamed(server, image)[0], images))
    assert together == [one_at_a_time[image] for image in images]
    wait_for(lambda: idle(server), "every slot free after the streams")


def test_models_and_health(server):
    assert [model.id for model in client(server).models.list()] == ["captcha-tiny"]
    state = health(server)
    assert state["status"] == "ok" and state["num_slots"] == 4 and state["capacity"] == 4 + 32


@pytest.mark.parametrize("stream", [False, True])
def test_the_client_example_prints_the_answer(server, stream):
    command = [sys.executable, str(REPO_ROOT / "openai_demo" / "openai_api_request.py"), "--base_url",
               f"{server}/v1", "--image", str(EXAMPLES / "3640.png"), "--query", QUERY, *(["--stream"] * stream)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert (result.returncode, result.stdout) == (0, "3640\n"), result.stderr[-2000:]


def test_the_client_example_prints_the_servers_error_in_one_line(server):
    command = [sys.executable, str(REPO_ROOT / "openai_demo" / "openai_api_request.py"), "--base_url",
               f"{server}/v1", "--image", "data:image/png;base64,AAAA"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 1
    assert result.stderr == "Error: 400: image_url: not a supported image file: the data: URL image\n"


# --- capacity and cancellation ---------------------------------------------------------------------------------------

def open_long_stream(base_url: str):
    """A stream that generates until it is closed, once its first token has arrived (it holds a slot)."""
    stream = client(base_url).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"), stream=True,
                                                      **LONG)
    chunks = iter(stream)
    while not next(chunks).choices[0].delta.content:
        pass
    return stream


def ended(base_url: str) -> dict:
    return health(base_url)["ended"]


def test_a_full_queue_answers_429_with_retry_after(small_server):
    before = ended(small_server)
    running = open_long_stream(small_server)
    waiting = client(small_server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"),
                                                           stream=True, **LONG)
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            client(small_server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"))
        assert refused.value.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        assert refused.value.body["code"] == "queue_full"
        assert health(small_server)["queued"] == 1
    finally:
        running.close()
        waiting.close()
    wait_for(lambda: idle(small_server), "the closed streams' places freed")
    assert ended(small_server) == {**before, "cancelled": before["cancelled"] + 2}
    answer = client(small_server).chat.completions.create(model="m", messages=ask(EXAMPLES / "3640.png"))
    assert answer.choices[0].message.content == "3640"


def test_a_cancelled_stream_frees_its_slot(small_server):
    before = ended(small_server)
    stream = open_long_stream(small_server)
    assert health(small_server)["busy_slots"] == 1
    stream.close()
    wait_for(lambda: idle(small_server), "the cancelled stream's slot freed")
    # Cancelled, not run to its end (that would count as "length").
    assert ended(small_server) == {**before, "cancelled": before["cancelled"] + 1}
    # The one slot serves the next request: it was not left running the cancelled answer to its end.
    answer = client(small_server).chat.completions.create(model="m", messages=ask(EXAMPLES / "6631.png"))
    assert answer.choices[0].message.content == "6631"


def test_a_client_gone_before_a_plain_answer_frees_its_slot(small_server):
    before = ended(small_server)
    body = {"model": "m", "messages": ask(EXAMPLES / "3640.png"), "max_tokens": LONG["max_tokens"],
            **LONG["extra_body"]}
    payload = json.dumps(body).encode()
    host, port = small_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HANG_TIMEOUT) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        wait_for(lambda: health(small_server)["busy_slots"] == 1, "the request running")
    wait_for(lambda: idle(small_server), "the abandoned request's slot freed")
    assert ended(small_server) == {**before, "cancelled": before["cancelled"] + 1}


# --- bad input -------------------------------------------------------------------------------------------------------

def two_image_messages():
    return [{"role": "user", "content": [{"type": "text", "text": QUERY},
                                         {"type": "image_url", "image_url": {"url": data_url(IMAGES[0])}},
                                         {"type": "image_url", "image_url": {"url": data_url(IMAGES[1])}}]}]


BAD_INPUTS = {
    "not JSON": (b"{not json", 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "no messages": ({"model": "m"}, 400, "messages: Field required"),
    "a wrong part type": ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400, "messages[0].content"),
    "temperature out of range": ({"messages": ask(IMAGES[0]), "temperature": 3}, 400, "temperature"),
    "n above 1": ({"messages": ask(IMAGES[0]), "n": 2}, 400, "n:"),
    "no image": ({"messages": ask(None)}, 400, "add an image_url part"),
    "two images": ({"messages": two_image_messages()}, 400, "one image per conversation"),
    "an undecodable base64 image": ({"messages": ask("data:image/png;base64,@@@@")}, 400, "does not decode"),
    "a file that is not an image": ({"messages": ask("data:image/png;base64," + base64.b64encode(b"hello").decode())},
                                    400, "not a supported image file"),
    "a truncated PNG": ({"messages": ask("data:image/png;base64," + base64.b64encode(
        IMAGES[0].read_bytes()[:200]).decode())}, 400, "image"),
    "an oversized image": ({"messages": ask("data:image/png;base64," + "A" * (2 * MAX_IMAGE_MB * 1024 * 1024))},
                           413, "more than the"),
    "an http URL without --allow_image_urls": ({"messages": ask("http://example.com/a.png")}, 400,
                                               "--allow_image_urls"),
    "an image URL of another scheme": ({"messages": ask("file:///etc/passwd")}, 400, "data: URL"),
    "a prompt over the context": ({"messages": ask(IMAGES[0], "word " * 2 * CONTEXT)}, 400, "leaves no room"),
    "max_tokens over the context": ({"messages": ask(IMAGES[0]), "max_tokens": CONTEXT}, 400, "exceed"),
    "an empty question": ({"messages": ask(IMAGES[0], "   ")}, 400, "no text"),
    "ending with an assistant message": ({"messages": [*ask(IMAGES[0]), {"role": "assistant", "content": "hi"}]}, 400,
                                         "last message must be a user message"),
    "an image in an assistant message": ({"messages": [{"role": "user", "content": "a"}, {
        "role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url(IMAGES[0])}}]},
        *ask(IMAGES[0])]}, 400, "only user messages may hold images"),
    "a seed beyond int64": ({"messages": ask(IMAGES[0]), "seed": 2**64}, 400, "seed"),
    "too many stop sequences": ({"messages": ask(IMAGES[0]), "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gets_a_4xx_with_openais_error_shape(server, name):
    body, status, fragment = BAD_INPUTS[name]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server}/v1/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=HANG_TIMEOUT)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"] and "\n" not in error["message"]
    assert "Traceback" not in response.text


def test_the_official_client_sees_bad_input_as_a_bad_request_and_the_server_goes_on(server):
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(model="m", messages=ask(None))
    assert refused.value.body["code"] == "image_required"
    assert client(server).chat.completions.create(model="m", messages=ask(IMAGES[0])).choices[0].message.content \
        == IMAGES[0].stem


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nowhere", 404), ("GET", "/v1/chat/completions", 405)])
def test_unknown_routes_get_openais_error_shape(server, method, path, status):
    response = httpx.request(method, f"{server}{path}", timeout=HANG_TIMEOUT)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- units: no server ----------------------------------------------------------------------------------------------

class CharacterTokenizer:
    """Token id i is chr(i): decoding is joining."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def pieces_of(text: str, stops: tuple[str, ...]) -> tuple[list[str], str, bool]:
    from cogvlm.openai_demo.engine_loop import AnswerText

    answer = AnswerText(CharacterTokenizer(), stops)
    pieces = []
    for character in text:
        pieces.append(answer.push(ord(character)))
        if answer.stopped:
            break
    pieces.append(answer.finish())
    return [piece for piece in pieces if piece], answer.answer, answer.stopped


@pytest.mark.parametrize("text, stops, answer, stopped", [
    ("  hello world  ", (), "hello world", False),
    ("abc STOP def", ("STOP",), "abc", True),
    ("abc STO", ("STOP",), "abc STO", False),
    ("x\ny", ("\n",), "x", True),
    ("aaab", ("ab", "b"), "aa", True),
])
def test_answer_text_cuts_at_the_first_stop_and_its_pieces_add_up(text, stops, answer, stopped):
    pieces, whole, was_stopped = pieces_of(text, stops)
    assert (whole, was_stopped) == (answer, stopped)
    assert "".join(pieces) == answer
    assert not any(stop in piece for piece in pieces for stop in stops)


def test_grounding_boxes_are_an_extension_field():
    from cogvlm.openai_demo.protocol import boxes_field, completion

    text = "A dog[[086,540,400,760]] chasing two birds[[512,100,600,300;650,120,720,310]]."
    boxes = boxes_field(text)
    assert [item["boxes"] for item in boxes] == [[[86, 540, 400, 760]], [[512, 100, 600, 300], [650, 120, 720, 310]]]
    assert [item["phrase"] for item in boxes] == ["A dog", "chasing two birds"]
    assert completion("id", "m", text, "stop", 1, 1)["choices"][0]["message"]["boxes"] == boxes
    assert "boxes" not in completion("id", "m", "no box here [[1,2]]", "stop", 1, 1)["choices"][0]["message"]


def test_messages_become_a_query_a_history_and_one_image():
    from cogvlm.openai_demo.protocol import ChatCompletionRequest, conversation

    request = ChatCompletionRequest.model_validate({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "Its colour?"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}}]}]})
    talk = conversation(request)
    assert (talk.query, talk.history, talk.image_url) == ("Its colour?", [("Be brief.\nWhat is it?", "A cat.")],
                                                          "data:x")


class ImageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
            return
        data = (EXAMPLES / "3640.png").read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_site():
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


def test_image_urls_at_private_addresses_are_refused_unless_allowed(image_site):
    from cogvlm.openai_demo.images import ImagePolicy, load_request_image
    from cogvlm.openai_demo.protocol import ApiError

    for url in (f"{image_site}/image.png", f"{image_site}/redirect"):
        with pytest.raises(ApiError) as refused:
            load_request_image(url, ImagePolicy(allow_urls=True))
        assert refused.value.status == 400 and "loopback, private or link-local" in refused.value.message
        assert load_request_image(url, ImagePolicy(allow_urls=True, allow_private_urls=True)).size == \
            load_request_image(data_url(EXAMPLES / "3640.png"), ImagePolicy()).size


def test_with_allow_image_urls_a_loopback_url_is_still_refused(small_server, image_site):
    with pytest.raises(openai.BadRequestError) as refused:
        client(small_server).chat.completions.create(model="m", messages=ask(f"{image_site}/image.png"))
    assert "loopback, private or link-local" in refused.value.body["message"]
    assert "--allow_private_image_urls" in refused.value.body["message"]


def test_link_local_addresses_are_refused_and_public_ones_pass():
    from cogvlm.openai_demo import images
    from cogvlm.utils.preprocessing.image_processor import ImageLoadError

    with pytest.raises(ImageLoadError, match="169.254.169.254"):
        images.check_public_address("http://169.254.169.254/latest/meta-data")
    images.check_public_address("http://93.184.215.14/a.png")          # a public address passes


@pytest.mark.parametrize("script", ["openai_api.py", "openai_api_request.py"])
def test_help_imports_nothing_heavy(script):
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO_ROOT / "openai_demo" / script), "--help"],
                            capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0 and "--" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert not imported & {"torch", "sat", "fastapi", "uvicorn", "openai", "PIL", "requests"}


# --- model parallel ------------------------------------------------------------------------------------------------

def mp1_greedy_answer(checkpoint: Path, tokenizer: Path, image: Path | None, max_tokens: int) -> str:
    """The answer of one process (no model parallelism), by the single-request hot path."""
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig, generate

    chat = ChatModel.from_pretrained(checkpoint, str(tokenizer))
    prompt = chat.prompt(QUERY, [], None if image is None else chat.prepare_image(str(image)))
    ids = list(generate(chat.model, prompt, SamplingConfig(max_length=len(prompt) + max_tokens)))
    return chat.tokenizer.decode(ids).strip()


@pytest.mark.slow
def test_under_torchrun_rank_0_serves_and_both_ranks_step(tmp_path, monkeypatch):
    fixture = REPO_ROOT / "tests" / "fixtures" / "cogvlm-tiny"
    checkpoint, tokenizer = fixture / "checkpoint", fixture / "tokenizer.model"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")
    with open(tmp_path / "server.log", "w") as log, running_server(
            "--from_pretrained", str(checkpoint), "--local_tokenizer", str(tokenizer), "--allow_text_only",
            launcher=launcher, log=log, timeout=HANG_TIMEOUT) as base_url:
        def answer(image):
            return client(base_url).chat.completions.create(
                model="m", messages=ask(image), max_tokens=6, extra_body={"ignore_eos": True}).choices[0].message
        alone = [answer(image).content for image in (IMAGES[0], None)]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            together = [message.content for message in pool.map(answer, [IMAGES[0], None, IMAGES[0]])]
    assert alone == [mp1_greedy_answer(checkpoint, tokenizer, image, 6) for image in (IMAGES[0], None)]
    assert together == [alone[0], alone[1], alone[0]]


# --- the engine loop without HTTP ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captcha_chat():
    from cogvlm.utils.inference.chat import ChatModel

    return ChatModel.from_pretrained(REPO_ROOT / "checkpoints" / "captcha-tiny")


def test_a_failure_inside_the_model_answers_its_requests_and_the_loop_goes_on(captcha_chat, monkeypatch):
    from cogvlm.openai_demo.engine_loop import EngineLoop, Finished
    from cogvlm.utils.inference.engine import Request, Scheduler
    from cogvlm.utils.inference.generation import SamplingConfig

    prompt = captcha_chat.prompt(QUERY, [], captcha_chat.prepare_image(str(EXAMPLES / "3640.png")))
    real_step = Scheduler.step
    failures = iter([True])

    def step_failing_once(self):
        if next(failures, False):
            raise RuntimeError("out of memory\nin a kernel")
        return real_step(self)

    monkeypatch.setattr(Scheduler, "step", step_failing_once)
    engine = EngineLoop(captcha_chat, num_slots=2, max_length=256, max_queue=2)
    engine.start()

    async def answer(request_id: str) -> Finished:
        assert engine.try_reserve()
        job = engine.submit(Request(prompt, SamplingConfig(max_length=256), (captcha_chat.tokenizer.eos_token_id,),
                                    request_id), ())
        while not isinstance(item := await job.events.get(), Finished):
            pass
        return item

    try:
        failed = asyncio.run(answer("first"))
        assert (failed.reason, failed.error) == ("failure", "the model failed: out of memory in a kernel")
        served = asyncio.run(answer("second"))
        assert (served.reason, served.text) == ("stop", "3640")
    finally:
        engine.stop()
    assert engine.stats.ended["failure"] == 1 and engine.stats.in_flight == 0


# --- the agent extension (openai_demo/agent.py) ----------------------------------------------------------------------

SCREENSHOT = EXAMPLES / "3640.png"          # 160 x 60 pixels
# An answer of the model, as an earlier step the client sends back, and the history line the query makes of it.
EARLIER_ANSWER = ("Action: Click the 'Inbox' folder, then wait.\nGrounded Operation: CLICK(box=[[10,20,110,220]], "
                  "element_type='Button', element_info='Inbox, (3) unread')\n<<一般操作>>")
EARLIER_LINE = "0. CLICK(box=[[10,20,110,220]], element_type='Button', element_info='Inbox, (3) unread')\t" \
               "Click the 'Inbox' folder, then wait."
UNPARSED_STEP = {"operation": None, "reason": "the answer has no 'Grounded Operation:' line", "arguments": {},
                 "sensitive": None, "sensitivity": None, "status": None, "plan": None, "action": None,
                 "grounded_operation": None, "box_pixels": None, "point": None}


def screenshot_only(image: Path = SCREENSHOT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}]}]


def test_an_agent_request_is_the_cli_query_and_its_unparsed_answer_is_no_error(server):
    from cogvlm.utils.agent.protocol import HistoryStep, build_query

    agent = {"task": "Read the code", "platform": "WIN", "format": "status_plan_action_op",
             "history": [EARLIER_ANSWER, {"grounded_operation": "TYPE(box=[[1,2,3,4]], text='x')", "action": "Type."}]}
    chat = client(server).chat.completions
    response = chat.create(model="m", messages=screenshot_only(), extra_body={"agent": agent})
    query = build_query("Read the code", [HistoryStep("CLICK(box=[[10,20,110,220]], element_type='Button', "
                                                      "element_info='Inbox, (3) unread')",
                                                      "Click the 'Inbox' folder, then wait."),
                                          HistoryStep("TYPE(box=[[1,2,3,4]], text='x')", "Type.")],
                        "WIN", "status_plan_action_op")
    plain = chat.create(model="m", messages=ask(SCREENSHOT, query))
    # The same prompt as the query typed by hand: the same greedy answer from as many prompt tokens.
    assert (response.choices[0].message.content, response.usage.prompt_tokens) == \
        (plain.choices[0].message.content, plain.usage.prompt_tokens)
    # The captcha reader is no agent: its answer parses to no operation, which is reported, not refused.
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.model_extra["agent_step"] == UNPARSED_STEP
    assert "agent_step" not in plain.choices[0].message.model_extra


def test_a_streamed_agent_answer_sends_its_step_in_the_last_chunk(server):
    chat = client(server).chat.completions
    agent = {"agent": {"task": "Read the code", "continue": True}}
    whole = chat.create(model="m", messages=screenshot_only(), extra_body=agent)
    chunks = list(chat.create(model="m", messages=screenshot_only(), extra_body=agent, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.model_extra["agent_step"] == UNPARSED_STEP
    assert not any("agent_step" in (c.choices[0].delta.model_extra or {}) for c in chunks[:-1])


def test_a_cogagent_checkpoint_answers_an_agent_request_as_the_typed_query():
    from cogvlm.utils.agent.protocol import build_query

    fixture = REPO_ROOT / "tests" / "fixtures" / "cogagent-tiny"
    image = fixture / "image.png"
    with running_server("--from_pretrained", str(fixture / "checkpoint"), "--local_tokenizer",
                        str(fixture / "tokenizer.model"), "--num_slots", "2", timeout=HANG_TIMEOUT) as base_url:
        chat = client(base_url).chat.completions
        agent = chat.create(model="m", messages=screenshot_only(image), max_tokens=6,
                            extra_body={"agent": {"task": "Open the mail", "platform": "WIN"}})
        plain = chat.create(model="m", messages=ask(image, build_query("Open the mail", platform="WIN")),
                            max_tokens=6)
    assert (agent.choices[0].message.content, agent.usage.prompt_tokens) == \
        (plain.choices[0].message.content, plain.usage.prompt_tokens)
    # The tiny model's random weights write no step: cut off at max_tokens, reported as unparsed.
    assert agent.choices[0].finish_reason == "length"
    assert agent.choices[0].message.model_extra["agent_step"] == UNPARSED_STEP


def agent_body(agent, messages=None) -> dict:
    return {"messages": messages if messages is not None else screenshot_only(), "agent": agent}


BAD_AGENT_INPUTS = {
    "an empty task": (agent_body({"task": "  "}), "agent.task", "agent.task is empty"),
    "no task": (agent_body({"platform": "WIN"}), "agent.task", "Field required"),
    "a task that is no string": (agent_body({"task": 7}), "agent.task", "valid string"),
    "an unknown platform": (agent_body({"task": "a", "platform": "win"}), "agent.platform",
                            "unknown platform 'win': choose one of WIN, Mac, Mobile"),
    "an unknown format": (agent_body({"task": "a", "format": "op"}), "agent.format", "unknown answer format 'op'"),
    "a misspelt field": (agent_body({"task": "a", "platfrom": "WIN"}), "agent.platfrom", "Extra inputs"),
    "continue that is no boolean": (agent_body({"task": "a", "continue": "yes"}), "agent.continue", "boolean"),
    "agent that is no object": (agent_body("open the mail"), "agent", "valid dictionary"),
    "a history step without its operation": (agent_body({"task": "a", "history": [{"action": "Click."}]}),
                                             "agent.history[0].grounded_operation", "Field required"),
    "a history answer without a step": (agent_body({"task": "a", "history": [EARLIER_ANSWER, "3640"]}),
                                        "agent.history[1]", "no step can be read from this answer"),
    "a history step over two lines": (agent_body({"task": "a", "history": [{"grounded_operation": "END()",
                                                                            "action": "Done.\nReally."}]}),
                                      "agent.history", "must be one line"),
    "user text beside the screenshot": (agent_body({"task": "a"}, ask(SCREENSHOT)), "messages[0].content",
                                        "put the task in agent.task"),
    "no screenshot": (agent_body({"task": "a"}, [{"role": "user", "content": ""}]), "messages[0].content",
                      "must hold the screenshot"),
    "an assistant turn": (agent_body({"task": "a"}, [*screenshot_only(), {"role": "assistant", "content": "x"},
                                                     *screenshot_only()]), "messages", "agent.history"),
}


@pytest.mark.parametrize("name", BAD_AGENT_INPUTS)
def test_bad_agent_fields_get_a_400_naming_the_field(server, name):
    body, param, fragment = BAD_AGENT_INPUTS[name]
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=HANG_TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fragment in error["message"] and "\n" not in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_client_example_asks_for_an_agent_step(server, tmp_path, stream):
    earlier = tmp_path / "answer0.txt"
    earlier.write_text(EARLIER_ANSWER, encoding="utf-8")
    command = [sys.executable, str(REPO_ROOT / "openai_demo" / "openai_api_request.py"), "--base_url",
               f"{server}/v1", "--image", str(SCREENSHOT), "--agent_task", "Read the code", "--platform", "WIN",
               "--history", str(earlier), *(["--stream"] * stream)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT, encoding="utf-8")
    assert result.returncode == 0, result.stderr[-2000:]
    *answer, step = result.stdout.splitlines()
    assert answer and step.startswith("agent_step: ")
    assert json.loads(step[len("agent_step: "):]) == UNPARSED_STEP


def test_the_client_example_names_a_missing_history_file(tmp_path):
    missing = tmp_path / "answer0.txt"
    command = [sys.executable, str(REPO_ROOT / "openai_demo" / "openai_api_request.py"), "--base_url",
               "http://127.0.0.1:9/v1", "--image", str(SCREENSHOT), "--agent_task", "Read the code", "--history",
               str(missing)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert (result.returncode, result.stderr) == (1, f"Error: cannot read {missing}: No such file or directory\n")


# Units: the query and the step, without a model.

def agent_request(agent: dict):
    from cogvlm.openai_demo.protocol import parse_request

    return parse_request(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:screen"}}]}], "agent": agent}).encode())


@pytest.mark.parametrize("agent, query", [
    ({"task": "Open the mail"},
     "Task: Open the mail\nHistory steps: \n(Platform: Mac)\n(Answer in Action-Operation-Sensitive format.)"),
    ({"task": "Open the mail", "history": [EARLIER_ANSWER, {"grounded_operation": "END()", "action": "Done."}],
      "platform": "Mobile", "format": "status_action_op", "continue": True},
     (f"Task: Open the mail[Continue]\n\nHistory steps: \n{EARLIER_LINE}\n1. END()\tDone.\n(Platform: Mobile)\n"
      f"(Answer in Status-Action-Operation format.)")),
])
def test_the_server_builds_the_agent_query_of_build_query(agent, query):
    from cogvlm.openai_demo.agent import agent_conversation
    from cogvlm.utils.agent.protocol import HistoryStep, build_query

    talk = agent_conversation(agent_request(agent))
    assert (talk.query, talk.history, talk.image_url) == (query, [], "data:screen")
    history = [HistoryStep(*line.split(". ", 1)[1].split("\t")) for line in query.splitlines()
               if line[:1].isdigit()]
    assert talk.query == build_query(agent["task"], history, agent.get("platform", "Mac"),
                                     agent.get("format", "action_op_sensitive"),
                                     continue_task=agent.get("continue", False))


SENSITIVE_ANSWER = ("Status: The mail app is open.\nPlan: 1. Delete the draft; 2. Done.\nAction: Delete the draft.\n"
                    "Grounded Operation: CLICK(box=[[500,250,700,750]], element_type='Button', "
                    "element_info='Delete \"draft, v2\"')\n<<敏感操作>>")


def test_an_answer_becomes_its_agent_step_in_pixels_of_the_screenshot():
    from cogvlm.openai_demo.agent import agent_step_field

    assert agent_step_field(SENSITIVE_ANSWER, (1920, 1080)) == {
        "operation": "CLICK", "reason": None,
        "arguments": {"box": [500, 250, 700, 750], "element_type": "Button", "element_info": 'Delete "draft, v2"'},
        "sensitive": True, "sensitivity": "敏感操作", "status": "The mail app is open.",
        "plan": "1. Delete the draft; 2. Done.", "action": "Delete the draft.",
        "grounded_operation": "CLICK(box=[[500,250,700,750]], element_type='Button', "
                              "element_info='Delete \"draft, v2\"')",
        "box_pixels": [960, 270, 1344, 810], "point": [1152, 540]}
    cut_off = agent_step_field("Action: Type.\nGrounded Operation: TYPE(box=[[1,2,3,4]], text='hel", (100, 100))
    assert cut_off["operation"] is None and cut_off["reason"] and cut_off["action"] == "Type."


class FakeJob:
    def __init__(self, *events):
        self.request_id = "chatcmpl-test"
        self.events = asyncio.Queue()
        for event in events:
            self.events.put_nowait(event)


def test_a_parsed_step_reaches_the_message_and_the_last_chunk():
    from cogvlm.openai_demo.app import Prepared, completion_response, stream
    from cogvlm.openai_demo.engine_loop import Finished, Piece

    prepared = Prepared(request=None, stops=(), prompt_tokens=10, agent_screen=(1920, 1080))
    finished = Finished("stop", SENSITIVE_ANSWER, 30)
    message = completion_response(finished, "chatcmpl-test", "m", prepared)["choices"][0]["message"]
    assert (message["content"], message["agent_step"]["point"]) == (SENSITIVE_ANSWER, [1152, 540])
    assert message["agent_step"]["sensitive"] is True

    async def events():
        return [line async for line in stream(None, FakeJob(Piece(SENSITIVE_ANSWER), finished), "m", prepared,
                                              False)]

    lines = asyncio.run(events())
    last = json.loads(lines[-2][len("data: "):])["choices"][0]
    assert last["finish_reason"] == "stop" and last["delta"]["agent_step"] == message["agent_step"]
    assert lines[-1] == "data: [DONE]\n\n"
    plain = Prepared(request=None, stops=(), prompt_tokens=10)
    assert "agent_step" not in completion_response(finished, "id", "m", plain)["choices"][0]["message"]
