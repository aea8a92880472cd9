"""Published checkpoints into $SAT_HOME, over networks that drop, lie about Range, or serve error pages.

    ensure_model("cogvlm-chat-v1.1")   ->  $SAT_HOME/cogvlm-chat-v1.1   (downloaded and unzipped on first use)

The folder is either complete or absent: the zip is fetched into `<name>.zip.part` (resumed with a Range header
after an interruption, also by a later run), verified (zip CRCs, and the sha256 when MODEL_SHA256 has one), renamed
to `<name>.zip`, unpacked into a temporary folder inside $SAT_HOME and renamed into place. A FileLock per name makes
concurrent processes download once; the others wait and then find the folder.

The published URLs are `r2://<name>.zip` objects in SAT's Cloudflare R2 bucket. Rather than SAT's boto3 transfer,
they are turned into presigned https URLs (signed locally, no network) so that one HTTP downloader handles them,
mirrors and plain URLs alike. SAT's own downloader (sat.resources.download) saved a 404 page as the zip and appended
a second full copy when a server ignored Range; this one checks the status and restarts instead.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import requests
from filelock import FileLock, Timeout
from tqdm import tqdm

from cogvlm.utils.checkpoint_io.sat_home import DEFAULT_SAT_HOME, SAT_HOME_ENV, sat_home  # noqa: F401

MIRROR_ENV = "COGVLM_MIRROR"  # a base URL serving {mirror}/{name}.zip

R2_SCHEME = "r2://"
MODEL_URLS: dict[str, str] = {
    name: f"{R2_SCHEME}{name}.zip"
    for name in ("cogvlm-chat-v1.1", "cogvlm-base-224", "cogvlm-base-490", "cogvlm-grounding-generalist-v1.1",
                 "cogagent-chat", "cogagent-vqa")
}
# Models published only as Hugging Face weights (name -> repository): no SAT zip exists, so the name works through
# $SAT_HOME (a folder converted there) or COGVLM_MIRROR (a server holding <name>.zip), and is explained otherwise.
HF_ONLY_MODELS: dict[str, str] = {
    "glm-4v-9b": "THUDM/glm-4v-9b",
    "cogagent-9b-20241220": "THUDM/cogagent-9b-20241220",
}
# Name -> sha256 hex digest of the zip, checked when present. Empty: the published digests are not known.
MODEL_SHA256: dict[str, str] = {}

# SAT's public, read-only R2 credentials, copied as data from sat/resources/download.py.
SAT_R2_ACCOUNT = "c8a00746a80e06c4632028e37de24d6e"
SAT_R2_ACCESS_KEY = "eb4d69e273848089c7f9b9599cdcd983"
SAT_R2_SECRET_KEY = "367e9b21fef313f187026320016962b47b74ca4ada7d64d551c43c51e195d7a5"
SAT_R2_BUCKET = "sat"
SAT_R2_ENDPOINT = f"https://{SAT_R2_ACCOUNT}.r2.cloudflarestorage.com"
PRESIGNED_URL_LIFETIME = 7 * 24 * 3600  # seconds, the SigV4 maximum: a 35 GB zip on a slow link takes hours

CHECKPOINT_FILES = ("model_config.json", "latest")  # what makes an unpacked folder a SAT checkpoint
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
UNZIP_PREFIX = ".unzip-"  # temporary folders: `.unzip-<name>-XXXX` inside the home, hidden, never a model name

DEFAULT_TIMEOUT = 30.0  # seconds to connect, and between two received bytes
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_ATTEMPTS = 5  # attempts in a row that receive nothing before giving up; any progress resets the count
RETRY_DELAY = 2.0  # seconds, times the number of failed attempts in a row
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})  # worth retrying
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
HASH_BLOCK = 1 << 20
# "bytes 100-199/200" (a 206's range) or "bytes */200" (a 416's); either side may be "*" when unknown
CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(ValueError):
    """A download or install that failed; the one-line message says what and where."""


class _Transient(Exception):
    """A failure worth retrying: a short body, or a 429/5xx answer."""


def checkpoint_not_found(name_or_path: str | os.PathLike) -> str | None:
    """None when `name_or_path` is a folder, a model under $SAT_HOME or a name that can be downloaded; else why not,
    in one line. It needs no torch, so that a front end checks its argument before importing the model stack."""
    name = str(name_or_path)
    if (Path(name).expanduser().is_dir() or (sat_home() / name).is_dir() or name in MODEL_URLS
            or os.environ.get(MIRROR_ENV)):
        return None
    if name in HF_ONLY_MODELS:
        return hf_only_message(name)
    return (f"checkpoint '{name}' not found: it is neither a folder nor a model under $SAT_HOME ({sat_home()}), "
            f"and not a published name ({', '.join([*MODEL_URLS, *HF_ONLY_MODELS])})")


def hf_only_message(name: str) -> str:
    """What to do with a model published only as Hugging Face weights, in one line."""
    return (f"'{name}' is published as Hugging Face weights ({HF_ONLY_MODELS[name]}), not as a SAT checkpoint: "
            f"download that repository into a folder HF_DIR and convert it once with `python "
            f"utils/convert_hf_checkpoint.py --hf HF_DIR --sat {sat_home() / name}`, or set {MIRROR_ENV} to a "
            f"server holding {name}.zip")


def resolve_url(name: str, url: str | None = None) -> str:
    """The http(s) URL to fetch `name` from: `url` if given, else `$COGVLM_MIRROR/<name>.zip`, else MODEL_URLS.
    An r2:// URL is presigned locally (boto3, no network) into an https URL on SAT's R2 endpoint."""
    if url is None:
        mirror = os.environ.get(MIRROR_ENV)
        if mirror:
            url = f"{mirror.rstrip('/')}/{name}.zip"
        elif name in MODEL_URLS:
            url = MODEL_URLS[name]
        elif name in HF_ONLY_MODELS:
            raise DownloadError(hf_only_message(name))
        else:
            raise DownloadError(f"no download URL for '{name}': published models are {', '.join(MODEL_URLS)}; "
                                f"pass url= or set {MIRROR_ENV}")
    if url.startswith(R2_SCHEME):
        return _presign_r2(url[len(R2_SCHEME):])
    return url


def _presign_r2(key: str) -> str:
    try:
        import boto3  # deferred: ~0.5 s of import time, only needed for r2:// URLs
        from botocore.config import Config
    except ImportError:
        raise DownloadError(f"r2://{key} needs boto3 to be signed: pip install boto3, or set {MIRROR_ENV} "
                            f"to an http(s) mirror") from None
    client = boto3.client("s3", endpoint_url=SAT_R2_ENDPOINT, region_name="auto",
                          aws_access_key_id=SAT_R2_ACCESS_KEY, aws_secret_access_key=SAT_R2_SECRET_KEY,
                          config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    return client.generate_presigned_url("get_object", Params={"Bucket": SAT_R2_BUCKET, "Key": key},
                                         ExpiresIn=PRESIGNED_URL_LIFETIME)


def _shown(url: str) -> str:
    """The URL without its query: what messages print (a presigned query is long and says nothing)."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _kept(part: Path) -> str:
    """What a failed download leaves behind, for its message: only a file that exists is named."""
    if _size(part):
        return f"{_size(part)} bytes kept in {part}: run again to resume"
    return "nothing was received: check the URL and the network (or a proxy), then run again"


def download(url: str, dest_zip: str | os.PathLike, *, expected_sha256: str | None = None,
             timeout: float = DEFAULT_TIMEOUT, chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True,
             attempts: int = DEFAULT_ATTEMPTS) -> Path:
    """Fetch a zip from an http(s) `url` into `dest_zip`, through `dest_zip.part`, and return `dest_zip`.

    An existing `.part` is resumed with a Range header; a cut connection or a 5xx answer is retried, resuming, until
    `attempts` tries in a row receive nothing. `dest_zip` appears only once verified (a readable zip whose CRCs
    match, and `expected_sha256` when given). On failure raises DownloadError: the `.part` of an interrupted transfer
    is kept for the next run to resume; a corrupt or unusable one is deleted so that the next run starts clean.
    """
    dest_zip = Path(dest_zip)
    part = dest_zip.with_name(dest_zip.name + PART_SUFFIX)
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        before = _size(part)
        try:
            if _fetch(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress, desc=dest_zip.name):
                break
            # else the part was not a prefix of the file and is gone: fetch again from the start
        except (_Transient, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            failures = 1 if _size(part) > before else failures + 1
            reason = error if isinstance(error, _Transient) else type(error).__name__
            if failures >= attempts:
                raise DownloadError(f"download of {_shown(url)} interrupted ({reason}) after {failures} attempt(s) "
                                    f"without progress; {_kept(part)}") from None
            _say(progress, f"download of {_shown(url)} interrupted ({reason}) at {_size(part)} bytes; resuming")
            time.sleep(RETRY_DELAY * failures)
        except requests.RequestException as error:
            raise DownloadError(f"download of {_shown(url)} failed: {type(error).__name__}") from None
    problem = _verification_problem(part, expected_sha256)
    if problem is not None:
        part.unlink()
        raise DownloadError(f"downloaded {_shown(url)} into {part}, but {problem}; deleted it so the next try "
                            f"starts clean")
    os.replace(part, dest_zip)
    return dest_zip


def _fetch(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool, desc: str) -> bool:
    """One GET that completes `part` from its current size: True when done, False when the part turned out not to
    be a prefix of the file and was deleted. Raises _Transient when the body arrives short."""
    offset = _size(part)
    # identity: byte ranges and Content-Length must count the file's bytes, not a compressed encoding's
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        start, total = _content_range(response)
        if response.status_code == HTTP_RANGE_NOT_SATISFIABLE and offset:
            if total is None or total == offset:
                return True  # the part already holds every byte there is: verification decides
            part.unlink()  # longer than the file, so not a prefix of it
            return False
        _check_status(response, url)
        if response.status_code != HTTP_PARTIAL_CONTENT:
            offset = 0  # the server ignored Range and sends the whole file: overwrite, never append
        elif start != offset:
            part.unlink()
            raise DownloadError(f"{_shown(url)} answered Range: bytes={offset}- with Content-Range "
                                f"{response.headers.get('Content-Range')!r}; deleted {part} so the next try starts "
                                f"clean")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as file, \
                tqdm(total=expected, initial=offset, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                     disable=None if progress else True) as bar:  # None: shown on a terminal only
            for chunk in response.iter_content(chunk_size):
                file.write(chunk)
                bar.update(len(chunk))
    if expected is not None and _size(part) != expected:
        raise _Transient(f"body ended at byte {_size(part)} of {expected}")
    return True


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header, None where absent or '*'."""
    match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _check_status(response: requests.Response, url: str) -> None:
    if response.status_code < 400:
        return
    message = f"download of {_shown(url)} failed: HTTP {response.status_code} {response.reason or ''}".rstrip()
    raise (_Transient if response.status_code in TRANSIENT_STATUSES else DownloadError)(message)


def _verification_problem(path: Path, expected_sha256: str | None) -> str | None:
    """What is wrong with a downloaded zip, or None. Reads the whole file (twice with a digest)."""
    if expected_sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while block := file.read(HASH_BLOCK):
                digest.update(block)
        if digest.hexdigest() != expected_sha256.lower():
            return f"its sha256 {digest.hexdigest()} is not the expected {expected_sha256}"
    if not zipfile.is_zipfile(path):
        return "it is not a zip archive"
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        return f"the zip archive is corrupt ({error})"
    if bad_member is not None:
        return f"its member {bad_member} is corrupt"
    return None


def ensure_model(name: str, *, url: str | None = None, home: str | os.PathLike | None = None,
                 progress: bool = True) -> Path:
    """`home/<name>` ($SAT_HOME by default), downloaded from resolve_url(name, url) and unpacked if absent.

    An existing folder is returned without any network access. The zip may hold one top-level folder `<name>`
    (the published layout) or the checkpoint files directly; either way it must contain model_config.json and
    latest. A `<name>.zip` already in home (a verified earlier download, or one placed by hand) is unpacked without
    downloading. Raises DownloadError, leaving no `<name>` folder, when anything fails.
    """
    home = Path(home).expanduser() if home is not None else sat_home()
    target = home / name
    if target.is_dir():
        return target
    if Path(name).name != name or name in ("", ".", ".."):
        raise DownloadError(f"'{name}' is not a model name: it must be a plain folder name")
    try:
        lock = _lock(home, name, progress)
        try:
            if not target.is_dir():  # another process may have installed it while we waited
                zip_path = home / f"{name}.zip"
                if not zip_path.is_file():
                    source = resolve_url(name, url)
                    _say(progress, f"downloading {name} from {_shown(source)} into {target}")
                    download(source, zip_path, expected_sha256=MODEL_SHA256.get(name), progress=progress)
                _install(zip_path, name, target)
                zip_path.unlink()
        finally:
            lock.release()
    except OSError as error:  # a home that cannot be written, a full disk: one line, not a traceback
        raise DownloadError(f"cannot install {name} into {home}: {_reason(error)}; set {SAT_HOME_ENV} to a "
                            f"writable folder with room for the model") from None
    return target


def _reason(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or type(error).__name__}{where}"


def _lock(home: Path, name: str, progress: bool) -> FileLock:
    """The per-name lock in `home` (created first), held: one process installs, the others wait for it."""
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(home / f"{name}{LOCK_SUFFIX}")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(progress, f"waiting for another process installing {name} into {home} (lock {lock.lock_file})")
        lock.acquire()
    return lock


def _install(zip_path: Path, name: str, target: Path) -> None:
    """Unpack `zip_path` next to `target` and rename the checkpoint folder into place (atomic: same file system).
    An archive that cannot become the checkpoint is deleted, since installing it again would fail again."""
    home = target.parent
    for stale in home.glob(f"{UNZIP_PREFIX}{name}-*"):  # left by a killed process; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{UNZIP_PREFIX}{name}-", dir=home))
    unpacked = staging / "unpacked"  # created by extractall with the usual permissions (mkdtemp's are 0700)
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(unpacked)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            _discard(zip_path, f"is corrupt ({error})")
        entries = sorted(entry.name for entry in unpacked.iterdir()) if unpacked.is_dir() else []
        # the published layout is one folder <name>; the checkpoint files zipped directly are accepted too
        checkpoint = unpacked / name if entries == [name] else unpacked
        missing = [file for file in CHECKPOINT_FILES if not (checkpoint / file).is_file()]
        if missing:
            top_level = ", ".join(entries) or "empty"
            where = f"its folder '{name}'" if checkpoint != unpacked else f"its top level ({top_level})"
            _discard(zip_path, f"holds no SAT checkpoint: {where} lacks {', '.join(missing)}; expected one folder "
                               f"'{name}' or the checkpoint files at the top level")
        os.replace(checkpoint, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _discard(zip_path: Path, problem: str) -> NoReturn:
    zip_path.unlink()
    raise DownloadError(f"{zip_path} {problem}; deleted it so the next try downloads it again")
