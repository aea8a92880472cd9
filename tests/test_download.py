"""Tests for cogvlm.utils.checkpoint_io.download against a loopback HTTP server that misbehaves on request: 404s, cut
connections, ignored Range headers, corrupt archives, concurrent processes; and the one-line errors users see."""
import functools
import hashlib
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import one_line_error
import cogvlm.utils.checkpoint_io.download as download_module
from cogvlm.utils.checkpoint_io.download import (MODEL_SHA256, MODEL_URLS, SAT_R2_ACCOUNT, DownloadError, download,
                                                 ensure_model, resolve_url, sat_home)

REPO_ROOT = Path(__file__).parent.parent
CHECKPOINT = Path(__file__).parent / "fixtures" / "cogvlm-tiny" / "checkpoint"
NAME = "cogvlm-tiny"
CUT_AFTER = 100_000  # bytes the "cut" behaviour sends before closing the connection
# urllib3 drops the chunk being read when the connection is cut (IncompleteRead), so chunks that divide CUT_AFTER
# make the part end exactly at the cut
CHUNK_SIZE = CUT_AFTER // 4
SLOW_DELAY = 1.0  # seconds the "slow" behaviour waits before answering: long enough for a second process to queue
# Timeouts only bound a hang: no test waits for one to expire, and a loaded machine must not reach them.
SHORT_TIMEOUT = 60.0
PROCESS_TIMEOUT = 600.0
POLL_INTERVAL = 0.05  # how quickly the test server notices shutdown()
SERVER_LIFETIME = 900.0  # seconds; a leaked test server shuts itself down after this at the latest
RANGE_REQUEST = re.compile(r"bytes=(\d+)-")


def _checkpoint_zip(prefix=f"{NAME}/", skip=()) -> bytes:
    """The fixture checkpoint zipped (stored, so a flipped byte is a CRC error) under `prefix`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(CHECKPOINT.rglob("*")):
            relative = path.relative_to(CHECKPOINT).as_posix()
            if path.is_file() and relative not in skip:
                archive.write(path, prefix + relative)
    return buffer.getvalue()


GOOD_ZIP = _checkpoint_zip()


@dataclass
class ZipServer:
    """What the loopback server serves, and what it saw. Each GET takes the next behaviour of `script`, the last
    one repeating: "ok" (honours Range), "404", "503", "cut" (honours Range, announces the full Content-Length,
    closes after CUT_AFTER bytes), "ignore_range" (always 200 with the whole body), "slow" (ok after SLOW_DELAY)."""
    url: str
    body: bytes = GOOD_ZIP
    script: list = field(default_factory=lambda: ["ok"])
    ranges: list = field(default_factory=list)  # the Range header of each GET, None when absent
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def zip_url(self) -> str:
        return f"{self.url}/{NAME}.zip"

    def next_behaviour(self, range_header):
        with self.lock:
            self.ranges.append(range_header)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state = self.server.state
        behaviour = state.next_behaviour(self.headers.get("Range"))
        if behaviour in ("404", "503"):
            self.send_error(int(behaviour))
            return
        if behaviour == "slow":
            time.sleep(SLOW_DELAY)
        body = state.body
        match = RANGE_REQUEST.fullmatch(self.headers.get("Range", ""))
        start = int(match.group(1)) if match and behaviour != "ignore_range" else None
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start or 0:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[:CUT_AFTER] if behaviour == "cut" else payload)


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """Loopback requests bypass any proxy; no mirror; $SAT_HOME in tmp; retries without waiting."""
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    monkeypatch.delenv("COGVLM_MIRROR", raising=False)
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))
    monkeypatch.setattr(download_module, "RETRY_DELAY", 0.0)


@pytest.fixture
def server():
    """A ZipServer on 127.0.0.1, stopped at teardown (or after SERVER_LIFETIME)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ZipServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=functools.partial(httpd.serve_forever, poll_interval=POLL_INTERVAL),
                              daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield httpd.state
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(SHORT_TIMEOUT)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "sat_home"


def _assert_installed(folder: Path):
    files = sorted(p.relative_to(CHECKPOINT) for p in CHECKPOINT.rglob("*") if p.is_file())
    assert sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) == files
    for relative in files:
        assert (folder / relative).read_bytes() == (CHECKPOINT / relative).read_bytes()


def _leftovers(home: Path) -> list:
    """What is in home besides the lock file (which filelock may leave behind, harmlessly)."""
    return sorted(p.name for p in home.iterdir() if p.name != f"{NAME}.lock") if home.exists() else []


_one_line_error = functools.partial(one_line_error, DownloadError)


# ensure_model: install, layout checks, clean failures


def test_ensure_model_downloads_and_installs(server, home):
    assert ensure_model(NAME, url=server.zip_url, progress=False) == home / NAME
    _assert_installed(home / NAME)
    assert _leftovers(home) == [NAME]  # no zip, no .part, no temporary folder
    assert server.ranges == [None]


def test_flat_archive_is_accepted(server, home, tmp_path):
    server.body = _checkpoint_zip(prefix="")
    _assert_installed(ensure_model(NAME, url=server.zip_url, home=home, progress=False))
    probe = tmp_path / "probe"
    probe.mkdir()
    assert (home / NAME).stat().st_mode == probe.stat().st_mode  # not the temporary folder's 0700


def test_zip_already_in_home_is_installed_without_download(server, home):
    home.mkdir()
    (home / f"{NAME}.zip").write_bytes(GOOD_ZIP)
    _assert_installed(ensure_model(NAME, url=server.zip_url, progress=False))
    assert server.ranges == [] and _leftovers(home) == [NAME]


def test_name_must_be_a_folder_name(home):
    _one_line_error(lambda: ensure_model("../escape", url="http://127.0.0.1:9/x.zip"), "plain folder name")


@pytest.mark.parametrize(("body", "fragment"), [
    (_checkpoint_zip(prefix="other-name/"), "top level (other-name) lacks model_config.json, latest"),
    (_checkpoint_zip(skip={"latest"}), f"folder '{NAME}' lacks latest"),
], ids=["wrong-folder", "no-latest"])
def test_archive_without_the_checkpoint_is_deleted(server, home, body, fragment):
    server.body = body
    _one_line_error(lambda: ensure_model(NAME, url=server.zip_url, progress=False), "deleted", fragment)
    assert _leftovers(home) == []
    server.body = GOOD_ZIP
    _assert_installed(ensure_model(NAME, url=server.zip_url, progress=False))


def test_http_error_names_url_and_status(server, home):
    server.script = ["404"]
    _one_line_error(lambda: ensure_model(NAME, url=server.zip_url, progress=False), "HTTP 404", server.zip_url)
    assert _leftovers(home) == []


def _flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize(("body", "fragment"), [
    (b"<html>not found</html>" * 100, "not a zip archive"),
    (_flip_middle_byte(GOOD_ZIP), "is corrupt"),
], ids=["html-page", "flipped-byte"])
def test_corrupt_zip_is_deleted_and_the_next_try_starts_clean(server, home, body, fragment):
    server.body = body
    _one_line_error(lambda: ensure_model(NAME, url=server.zip_url, progress=False), fragment)
    assert _leftovers(home) == []
    server.body = GOOD_ZIP
    _assert_installed(ensure_model(NAME, url=server.zip_url, progress=False))
    assert server.ranges == [None, None]  # the second try did not resume the corrupt file


def test_registry_sha256_is_checked(server, home, monkeypatch):
    monkeypatch.setitem(MODEL_SHA256, NAME, "0" * 64)
    _one_line_error(lambda: ensure_model(NAME, url=server.zip_url, progress=False), "sha256", "0" * 64)
    assert _leftovers(home) == []


def test_existing_folder_needs_no_network(server, home, monkeypatch):
    (home / NAME).mkdir(parents=True)
    (home / "cogvlm-chat-v1.1").mkdir()

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(requests.Session, "request", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setitem(sys.modules, "boto3", None)  # presigning would fail: proves it is not attempted
    assert ensure_model(NAME, url=server.zip_url) == home / NAME
    assert ensure_model("cogvlm-chat-v1.1") == home / "cogvlm-chat-v1.1"
    assert server.ranges == []


SNIPPET = ("import sys; from cogvlm.utils.checkpoint_io.download import ensure_model; "
           "print(ensure_model(sys.argv[1], url=sys.argv[2], home=sys.argv[3], progress=False))")


def test_concurrent_processes_download_once(server, home):
    server.script = ["slow"]  # the first download lasts long enough for the other process to wait on the lock
    processes = [subprocess.Popen([sys.executable, "-c", SNIPPET, NAME, server.zip_url, str(home)], cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        results = [process.communicate(timeout=PROCESS_TIMEOUT) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
        assert stdout.strip() == str(home / NAME)
    assert server.ranges == [None]
    _assert_installed(home / NAME)


# download: resume, retries, servers that ignore Range


def test_interrupted_download_keeps_part_and_resumes(server, tmp_path):
    server.script = ["cut", "ok"]
    dest = tmp_path / "model.zip"
    part = tmp_path / "model.zip.part"
    _one_line_error(lambda: download(server.zip_url, dest, attempts=1, chunk_size=CHUNK_SIZE, progress=False),
                    "resume", str(part))
    assert part.read_bytes() == GOOD_ZIP[:CUT_AFTER] and not dest.exists()
    assert download(server.zip_url, dest, progress=False, timeout=SHORT_TIMEOUT) == dest
    assert server.ranges == [None, f"bytes={CUT_AFTER}-"]
    assert dest.read_bytes() == GOOD_ZIP and not part.exists()


def test_cut_connections_are_resumed_within_one_call(server, tmp_path):
    server.script = ["cut", "503", "cut", "ok"]
    dest = download(server.zip_url, tmp_path / "model.zip", chunk_size=CHUNK_SIZE, progress=False,
                    timeout=SHORT_TIMEOUT)
    assert server.ranges == [None, f"bytes={CUT_AFTER}-", f"bytes={CUT_AFTER}-", f"bytes={2 * CUT_AFTER}-"]
    assert dest.read_bytes() == GOOD_ZIP


def test_server_ignoring_range_restarts_instead_of_appending(server, tmp_path):
    server.script = ["ignore_range"]
    (tmp_path / "model.zip.part").write_bytes(GOOD_ZIP[:CUT_AFTER])
    dest = download(server.zip_url, tmp_path / "model.zip", progress=False, timeout=SHORT_TIMEOUT)
    assert server.ranges == [f"bytes={CUT_AFTER}-"]
    assert dest.read_bytes() == GOOD_ZIP


@pytest.mark.parametrize(("part_bytes", "ranges"), [
    (GOOD_ZIP, [f"bytes={len(GOOD_ZIP)}-"]),  # complete but not yet renamed: verified, no body fetched
    (GOOD_ZIP + b"junk", [f"bytes={len(GOOD_ZIP) + 4}-", None]),  # longer than the file: fetched again
], ids=["complete", "too-long"])
def test_range_not_satisfiable(server, tmp_path, part_bytes, ranges):
    (tmp_path / "model.zip.part").write_bytes(part_bytes)
    dest = download(server.zip_url, tmp_path / "model.zip", progress=False, timeout=SHORT_TIMEOUT)
    assert server.ranges == ranges
    assert dest.read_bytes() == GOOD_ZIP


def test_sha256_is_verified(server, tmp_path):
    dest = tmp_path / "model.zip"
    digest = hashlib.sha256(GOOD_ZIP).hexdigest()
    _one_line_error(lambda: download(server.zip_url, dest, expected_sha256="0" * 64, progress=False),
                    "sha256", digest, "deleted")
    assert list(tmp_path.iterdir()) == []
    assert download(server.zip_url, dest, expected_sha256=digest, progress=False).read_bytes() == GOOD_ZIP


# URLs and home


def test_resolve_url_precedence(monkeypatch):
    assert resolve_url("cogvlm-base-224", "http://example.test/x.zip") == "http://example.test/x.zip"
    monkeypatch.setenv("COGVLM_MIRROR", "https://mirror.test/models/")
    assert resolve_url("cogvlm-base-224") == "https://mirror.test/models/cogvlm-base-224.zip"
    assert resolve_url("cogvlm-base-224", "http://example.test/x.zip") == "http://example.test/x.zip"
    monkeypatch.delenv("COGVLM_MIRROR")
    monkeypatch.setitem(MODEL_URLS, "cogvlm-base-224", "http://registry.test/base.zip")
    assert resolve_url("cogvlm-base-224") == "http://registry.test/base.zip"
    _one_line_error(lambda: resolve_url("cogvlm-unknown"), "cogvlm-unknown", "COGVLM_MIRROR")


def test_every_downloadable_model_has_a_published_configuration_and_back():
    from cogvlm.models.config import PUBLISHED_CONFIGS

    assert set(MODEL_URLS) == set(PUBLISHED_CONFIGS)


def test_r2_url_is_presigned_locally(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    parts = urlsplit(resolve_url("cogagent-vqa"))
    assert (parts.scheme, parts.hostname) == ("https", f"{SAT_R2_ACCOUNT}.r2.cloudflarestorage.com")
    assert parts.path == "/sat/cogagent-vqa.zip"
    assert "X-Amz-Signature=" in parts.query


def test_missing_boto3_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    _one_line_error(lambda: resolve_url("cogagent-chat"), "boto3", "COGVLM_MIRROR")


def test_sat_home(monkeypatch, tmp_path):
    assert sat_home() == tmp_path / "sat_home"
    monkeypatch.delenv("SAT_HOME")
    assert sat_home() == Path.home() / ".sat_models"


def test_load_model_by_name_downloads_from_a_mirror_then_works_offline(server, home, monkeypatch):
    """The path users take: `--from_pretrained <name>` with COGVLM_MIRROR set, then again with the folder there."""
    from cogvlm.utils.checkpoint_io.loading import load_model

    monkeypatch.setenv("COGVLM_MIRROR", server.url)
    model, config = load_model(NAME)
    assert config.language.hidden_size == 64 and (home / NAME / "model_config.json").is_file()
    assert server.ranges == [None]
    load_model(NAME)                                   # present now: no second request
    assert server.ranges == [None]


# failures users meet, each one line: nothing received, an unwritable $SAT_HOME, a failure seen from the entry points

def _closed_port_url() -> str:
    with socket.socket() as probe:           # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NAME}.zip"


def test_a_download_that_received_nothing_names_no_part_file(tmp_path):
    url = _closed_port_url()
    message = _one_line_error(lambda: download(url, tmp_path / "model.zip", attempts=2, progress=False,
                                               timeout=SHORT_TIMEOUT), url, "nothing was received", "run again")
    assert ".part" not in message and list(tmp_path.iterdir()) == []


def _unwritable_home(tmp_path: Path, kind: str) -> Path:
    """A $SAT_HOME that cannot take a download, also for root (who may write into a read-only folder)."""
    if kind == "home_under_a_file":
        (tmp_path / "a_file").write_text("")
        return tmp_path / "a_file" / "sat_home"
    home = tmp_path / "sat_home"
    (home / f"cogvlm-chat-v1.1{download_module.LOCK_SUFFIX}").mkdir(parents=True)    # the lock cannot be created
    (home / f"{NAME}{download_module.LOCK_SUFFIX}").mkdir()
    return home


@pytest.mark.parametrize("kind", ["home_under_a_file", "lock_not_creatable"])
def test_an_unwritable_sat_home_is_one_line(server, tmp_path, monkeypatch, kind):
    home = _unwritable_home(tmp_path, kind)
    monkeypatch.setenv("SAT_HOME", str(home))
    _one_line_error(lambda: ensure_model(NAME, url=server.zip_url, progress=False), f"cannot install {NAME} into "
                    f"{home}", "SAT_HOME")
    assert server.ranges == []


TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "cogvlm-tiny" / "tokenizer.model"
ENTRY_POINTS = {
    "cli": ["basic_demo/cli_demo_sat.py", "--local_tokenizer", TOKENIZER],
    "finetune": ["finetune_demo/finetune_cogvlm_demo.py", "--local_tokenizer", TOKENIZER, "--deepspeed_config",
                 "finetune_demo/ds_config_cpu.json"],
}


@pytest.mark.parametrize("failure", ["http_404", "unwritable_home"])
@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_a_failed_download_is_one_error_line_from_the_entry_points(server, tmp_path, entry_point, failure):
    """`--from_pretrained <published name>` that cannot be downloaded, from the chat CLI and from fine-tuning."""
    server.script = ["404"]
    home = _unwritable_home(tmp_path, "home_under_a_file") if failure == "unwritable_home" else tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SAT_HOME=str(home), COGVLM_MIRROR=server.url, HF_HUB_OFFLINE="1")
    script, *args = ENTRY_POINTS[entry_point]
    result = subprocess.run([sys.executable, script, "--from_pretrained", "cogvlm-chat-v1.1", *map(str, args)],
                            cwd=REPO_ROOT, env=env, capture_output=True, timeout=PROCESS_TIMEOUT * 3,
                            stdin=subprocess.DEVNULL)
    err = result.stderr.decode()
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert result.returncode != 0 and "Traceback" not in err, err[-2000:]
    expected = (f"Error: download of {server.url}/cogvlm-chat-v1.1.zip failed: HTTP 404" if failure == "http_404"
                else f"Error: cannot install cogvlm-chat-v1.1 into {home}")
    assert len(errors) == 1 and errors[0].startswith(expected), err[-2000:]


# the 9B models published only as Hugging Face weights: through $SAT_HOME, the mirror, or a message saying how

def _zipped_folder(folder: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


@pytest.mark.parametrize("name, rope_layout", [("glm-4v-9b", "interleaved"), ("cogagent-9b-20241220", "rotate_half")])
def test_a_9b_name_comes_from_the_mirror_then_from_sat_home(server, home, tmp_path, monkeypatch, name, rope_layout):
    from test_glm4v_conversion import write_hf_folder
    from cogvlm.utils.checkpoint_io.hf_conversion import main as convert
    from cogvlm.utils.checkpoint_io.loading import read_model_config, resolve_checkpoint_dir

    write_hf_folder(tmp_path / "hf", "glm4v-tiny" if rope_layout == "interleaved" else "cogagent9b-tiny")
    assert convert(["--hf", str(tmp_path / "hf"), "--sat", str(tmp_path / "converted")]) == 0
    server.body = _zipped_folder(tmp_path / "converted", name)
    monkeypatch.setenv("COGVLM_MIRROR", server.url)
    assert resolve_checkpoint_dir(name) == home / name
    assert read_model_config(home / name)["rope_layout"] == rope_layout
    monkeypatch.delenv("COGVLM_MIRROR")
    assert resolve_checkpoint_dir(name) == home / name          # installed: no second request, no mirror needed
    assert server.ranges == [None]


@pytest.mark.parametrize("name, repository", [("glm-4v-9b", "THUDM/glm-4v-9b"),
                                              ("cogagent-9b-20241220", "THUDM/cogagent-9b-20241220")])
def test_a_9b_name_without_a_mirror_says_how_to_convert_it(home, name, repository):
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found
    from cogvlm.utils.checkpoint_io.loading import CheckpointError, resolve_checkpoint_dir

    message = checkpoint_not_found(name)
    assert "\n" not in message
    for fragment in (repository, "python utils/convert_hf_checkpoint.py --hf HF_DIR --sat", str(home / name),
                     "COGVLM_MIRROR"):
        assert fragment in message
    one_line_error(CheckpointError, lambda: resolve_checkpoint_dir(name), repository)
    _one_line_error(lambda: ensure_model(name, progress=False), repository)
    assert _leftovers(home) == [] or _leftovers(home) == [f"{name}.lock"]


def test_a_9b_hf_folder_under_sat_home_names_the_conversion_command(home, tmp_path):
    """Downloaded from Hugging Face straight into $SAT_HOME/glm-4v-9b: found, and explained."""
    from test_glm4v_conversion import write_hf_folder
    from cogvlm.utils.checkpoint_io.loading import CheckpointError, load_model

    write_hf_folder(home / "glm-4v-9b")
    one_line_error(CheckpointError, lambda: load_model("glm-4v-9b"), "Hugging Face checkpoint",
                   "python utils/convert_hf_checkpoint.py --hf")
