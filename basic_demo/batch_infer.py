"""Answer one query about every image of a folder (or a list of image/query pairs) into a JSON-lines file.

    python basic_demo/batch_infer.py --images DIR --query "What text is written in the image?" --output OUT.jsonl
    python basic_demo/batch_infer.py --input IN.jsonl --output OUT.jsonl --batch_size 8 --quant 8
        [--from_pretrained CKPT] [--local_tokenizer PATH] [--version chat] [--bf16 | --fp16] [--max_length N]

Input: --images DIR takes every file of DIR whose extension Pillow reads (with --recursive, of its subfolders too;
hidden files skipped); other files are listed once on stderr. --input IN.jsonl takes lines {"image": PATH or URL,
"query": TEXT}: relative paths are read from IN.jsonl's folder, and a line without "query" takes --query.

Output: one line per item, {"image", "query", "answer", "finish_reason"} ("length": cut at --max_length), plus
"boxes" ([[x0,y0,x1,y1], ...] in thousandths of the image size) when the answer holds grounding boxes. "image" is
the name relative to DIR, or the input line's value as written. Lines come in the order answers finish, not the
input's order. An image that cannot be read (or a request the model refuses, e.g. a prompt over --max_length) gets
a line {"image", "query", "error"} and an "Error: IMAGE: ..." line on stderr; the other images go on.

Resuming: run the same command again. Items whose (image, query) already has a line are skipped, error lines
included: --retry_errors removes the error lines and tries those items again. Each line is written whole (one
write, then fsync, with Ctrl-C held off meanwhile): Ctrl-C leaves only whole lines, and a last line cut short by a
crash or power loss is dropped at the next run, which answers that item again.

The images go through the continuous-batching engine: --batch_size requests are kept in flight, and an image is
loaded when a slot frees. The answers do not depend on --batch_size. A progress bar goes to stderr; the throughput
(images/s, generated tokens/s, counted from the first image loaded to the last line written) goes to stdout.

Exit status: 0 when every item has a line (some may be errors); 1 after a start-up error (flags, input file,
checkpoint) or a failure inside the model; 130 after Ctrl-C (run the command again to go on). One run at a time
per output file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cogvlm import warn_if_other_checkout
from cogvlm.basic_demo.cli_demo_sat import (EXIT_INTERRUPTED, add_model_arguments, add_sampling_arguments,
                                            check_common_arguments)

DEFAULT_BATCH_SIZE = 8
URL_PREFIXES = ("http://", "https://")


class JobError(ValueError):
    """A problem with the job's input or output files, found before the model loads: one line for the user."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images: each gets --query")
    source.add_argument("--input", help="JSON-lines file of {\"image\": PATH or URL, \"query\": TEXT} lines")
    parser.add_argument("--query", help="the question (--images); the default for --input lines without one")
    parser.add_argument("--output", required=True, help="JSON-lines file the answers are appended to")
    parser.add_argument("--recursive", action="store_true", help="--images: also the images of subfolders")
    parser.add_argument("--retry_errors", action="store_true",
                        help="try again the items whose earlier error lines are in --output (they are removed)")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="requests generated together")
    add_sampling_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.images is not None and not args.query:
        parser.error("--images needs --query")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    check_common_arguments(parser, args)
    return args


# --- the items ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    image: str              # as the output names it: relative to --images, or the input line's value
    source: str             # what is opened: a path or URL
    query: str

    @property
    def key(self) -> tuple[str, str]:
        return self.image, self.query


def image_extensions() -> frozenset[str]:
    """The file extensions Pillow opens (lower case, with the dot)."""
    from PIL import Image

    return frozenset(extension.lower() for extension in Image.registered_extensions())


def folder_items(folder: Path, query: str, recursive: bool = False) -> tuple[list[Item], list[str]]:
    """The images of `folder` by name (and the names of the other files, which are skipped), sorted."""
    if not folder.is_dir():
        raise JobError(f"--images {folder}: not a folder")
    extensions = image_extensions()
    items, others = [], []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        name = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(name).parts) or not path.is_file():
            continue
        if path.suffix.lower() in extensions:
            items.append(Item(name, str(path), query))
        else:
            others.append(name)
    return items, others


def input_items(path: Path, default_query: str | None) -> list[Item]:
    """The items of a JSON-lines input file; a malformed line is a JobError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise JobError(f"cannot read --input {path}: {getattr(problem, 'strerror', None) or problem}") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_input_item(path, number, line, default_query))
    return items


def _input_item(path: Path, number: int, line: str, default_query: str | None) -> Item:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as problem:
        raise JobError(f"{where} is not JSON: {problem.msg} (column {problem.colno})") from None
    if not isinstance(record, dict):
        raise JobError(f'{where}: expected an object {{"image": ..., "query": ...}}')
    image, query = record.get("image"), record.get("query", default_query)
    if not isinstance(image, str) or not image.strip():
        raise JobError(f'{where}: "image" must be a non-empty string (a path or URL)')
    if not isinstance(query, str) or not query.strip():
        raise JobError(f'{where}: "query" must be a non-empty string (or give --query for lines without one)')
    source = image if image.lower().startswith(URL_PREFIXES) else str(path.parent / Path(image).expanduser())
    return Item(image, source, query)


def unique(items: Sequence[Item]) -> tuple[list[Item], int]:
    """The items without repeats of an (image, query) pair (the first is kept), and how many were repeats."""
    seen, kept = set(), []
    for item in items:
        if item.key not in seen:
            seen.add(item.key)
            kept.append(item)
    return kept, len(items) - len(kept)


# --- the output file ---------------------------------------------------------------------------------------------


@dataclass
class Previous:
    """What an earlier run left in the output file."""
    answered: set[tuple[str, str]] = field(default_factory=set)
    failed: set[tuple[str, str]] = field(default_factory=set)
    torn: bool = False                          # a last line cut short was dropped


def read_previous(output: Path, retry_errors: bool) -> Previous:
    """The keys already answered or failed in `output`. A last line cut short (no newline, or not JSON) is
    dropped from the file; with `retry_errors` the error lines are removed (the file is rewritten atomically)."""
    previous = Previous()
    if not output.exists():
        return previous
    if not output.is_file():
        raise JobError(f"--output {output}: not a regular file")
    try:
        data = output.read_bytes()
    except OSError as problem:
        raise JobError(f"cannot read --output {output}: {problem.strerror}") from None
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]          # after the last newline: b"" unless the last line was cut
    records = []
    for number, line in enumerate(complete, start=1):
        record = _output_record(line)
        if record is None and number == len(complete) and not tail:
            previous.torn = True                    # a whole-looking last line that is not JSON: cut short too
            break
        if record is None:
            raise JobError(f"--output {output} line {number} is not a line this script writes; fix or remove it "
                           f"(or choose another --output)")
        records.append((line, record))
    previous.torn = previous.torn or bool(tail)
    kept = [(line, record) for line, record in records if not (retry_errors and "error" in record)]
    for _, record in kept:
        (previous.failed if "error" in record else previous.answered).add((record["image"], record["query"]))
    if previous.torn or len(kept) < len(records):
        _rewrite(output, b"".join(line + b"\n" for line, _ in kept))
    return previous


def _output_record(line: bytes) -> dict | None:
    """A line of the output file as a record with its image and query, or None if it is not one."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or \
            not isinstance(record.get("query"), str):
        return None
    return record


def _rewrite(path: Path, data: bytes) -> None:
    """Replace the file's content at once: a crash leaves either the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM off while a line is written: they arrive right after, between two lines."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):          # Windows: a torn last line is dropped at the next run
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class LineWriter:
    """Appends whole JSON lines: each line in one write, then fsync, so that it is either in the file or not."""

    def __init__(self, path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as problem:
            raise JobError(f"cannot write --output {path}: {problem.strerror}") from None

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        with signals_held():
            while data:                                 # a regular file takes it in one write; a short one goes on
                data = data[os.write(self.fd, data):]
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


# --- the job -----------------------------------------------------------------------------------------------------


def answer_record(item: Item, text: str, finish_reason: str) -> dict:
    from cogvlm.utils.grounding.boxes import parse_boxes

    record = {"image": item.image, "query": item.query, "answer": text, "finish_reason": finish_reason}
    boxes = parse_boxes(text)
    if boxes:
        record["boxes"] = [[box.x0, box.y0, box.x1, box.y1] for box in boxes]
    return record


def error_record(item: Item, error: str) -> dict:
    return {"image": item.image, "query": item.query, "error": error}


@dataclass
class Totals:
    answered: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0


class Job:
    """Feeds the items to ChatModel.stream_requests, each image loaded when a slot frees, and writes a line for
    each as it finishes."""

    def __init__(self, chat, sampling, writer: LineWriter, progress, report_error: Callable[[Item, str], None]):
        self.chat, self.sampling, self.writer, self.progress = chat, sampling, writer, progress
        self.report_error = report_error            # called with each failed item and its one-line error
        self.in_flight: dict[int, Item] = {}        # request index -> its item
        self.texts: dict[int, str] = {}
        self.totals = Totals()

    def run(self, items: Sequence[Item], batch_size: int) -> Totals:
        started = time.perf_counter()
        for event in self.chat.stream_requests(self._requests(items), batch_size, self.sampling.max_length):
            self.texts[event.index] = self.texts.get(event.index, "") + event.text
            if event.finish_reason is not None:
                self._finish(event)
        self.totals.seconds = time.perf_counter() - started
        return self.totals

    def _requests(self, items: Iterable[Item]):
        """The ChatRequests of the items, each image loaded when the engine asks for the next request; an image
        that cannot be loaded is written as an error and skipped."""
        from cogvlm.utils.inference.chat import ChatRequest
        from cogvlm.utils.inference.messages import describe

        index = 0
        for item in items:
            try:
                image = self.chat.prepare_image(item.source)
            except ValueError as problem:               # ImageLoadError and friends: this image only
                self._fail(item, describe(problem))
                continue
            self.in_flight[index] = item
            index += 1
            yield ChatRequest(item.query, (), image, self.sampling)

    def _finish(self, event) -> None:
        item, text = self.in_flight.pop(event.index), self.texts.pop(event.index).strip()
        if event.error is not None or event.finish_reason not in ("stop", "length"):
            self._fail(item, event.error or f"the request ended: {event.finish_reason}")
            return
        self.writer.write(answer_record(item, text, event.finish_reason))
        self.totals.answered += 1
        self.totals.tokens += event.tokens
        self.progress.update(1)

    def _fail(self, item: Item, error: str) -> None:
        error = " ".join(error.split())
        self.writer.write(error_record(item, error))
        self.report_error(item, error)
        self.totals.failed += 1
        self.progress.update(1)


def throughput(totals: Totals) -> str:
    seconds = max(totals.seconds, 1e-9)
    return (f"{totals.answered} answered, {totals.failed} failed in {totals.seconds:.2f} s: "
            f"{totals.answered / seconds:.2f} images/s, {totals.tokens / seconds:.1f} tokens/s")


# --- the command -------------------------------------------------------------------------------------------------


def note(text: str) -> None:
    """A status line on stderr, above the progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def error(text: str) -> None:
    note("Error: " + text)


def job_items(args) -> list[Item]:
    """The items the flags name, without repeats; the skipped files are noted (but not the output's own)."""
    if args.images is not None:
        folder, output = Path(args.images), Path(args.output).resolve()
        items, others = folder_items(folder, args.query, args.recursive)
        others = [name for name in others
                  if (folder / name).resolve() not in (output, output.with_name(output.name + ".tmp"))]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            note(f"Skipped {len(others)} file(s) that are not images by their extension: {shown}")
    else:
        items = input_items(Path(args.input), args.query)
    if not items:
        raise JobError(f"--images {args.images}: no images there" if args.images is not None
                       else f"--input {args.input}: no lines")
    kept, repeats = unique(items)
    if repeats:
        note(f"Skipped {repeats} repeated (image, query) pair(s) of the input")
    return kept


def items_to_do(items: list[Item], previous: Previous, output: Path) -> list[Item]:
    if previous.torn:
        note(f"Dropped the last line of {output}: it was cut short (a run was killed); its item is done again")
    done = previous.answered | previous.failed
    todo = [item for item in items if item.key not in done]
    skipped_answers = sum(1 for item in items if item.key in previous.answered)
    skipped_errors = sum(1 for item in items if item.key in previous.failed)
    if skipped_answers or skipped_errors:
        retry = f", {skipped_errors} with an earlier error (--retry_errors tries them again)" if skipped_errors else ""
        note(f"Resuming: {skipped_answers} item(s) already answered{retry}; {len(todo)} to do")
    return todo


def load_chat(args):
    """The ChatModel of the flags, or None after a one-line error (the CLI's loading, notices sent to stderr)."""
    from cogvlm.basic_demo.cli_demo_sat import Console
    from cogvlm.basic_demo.cli_demo_sat import load_chat as load_cli_chat
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found

    missing = checkpoint_not_found(args.from_pretrained)       # before the seconds it takes to import torch and SAT
    if missing is not None:
        error(missing)
        return None
    return load_cli_chat(args, Console(chinese=False))


def sampling_of(args):
    from cogvlm.utils.inference.generation import SamplingConfig

    return SamplingConfig(max_length=args.max_length, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def run(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        error("batch_infer.py runs in one process; model parallel (torchrun) is not supported")
        return 1
    output = Path(args.output)
    try:
        items = job_items(args)
        todo = items_to_do(items, read_previous(output, args.retry_errors), output)
        writer = LineWriter(output)
    except JobError as problem:
        error(str(problem))
        return 1
    try:
        if not todo:
            print(f"Nothing to do: all {len(items)} item(s) have a line in {output}")
            return 0
        chat = load_chat(args)
        if chat is None:
            return 1
        if args.version is not None and args.version != chat.version:
            note(f"Note: the checkpoint's text_processor_version '{chat.version}' overrides --version {args.version}")
        return run_job(chat, todo, args, writer, output)
    finally:
        writer.close()


def run_job(chat, todo: list[Item], args, writer: LineWriter, output: Path) -> int:
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="image", file=sys.stderr, dynamic_ncols=True) as progress:
        job = Job(chat, sampling_of(args), writer, progress, lambda item, text: error(f"{item.image}: {text}"))
        try:
            totals = job.run(todo, args.batch_size)
        except KeyboardInterrupt:
            progress.close()
            note(f"Interrupted: {job.totals.answered} answered, {job.totals.failed} failed in this run, all in "
                 f"{output}; run the same command again to go on")
            return EXIT_INTERRUPTED
        except RuntimeError as problem:             # inside the model: every request in flight is lost with it
            from cogvlm.utils.inference.messages import describe

            progress.close()
            error(f"{describe(problem)} ({job.totals.answered} answered, {job.totals.failed} failed in this run are "
                  f"in {output}; run the same command again to go on)")
            return 1
        except OSError as problem:                  # a full disk, a lost network share
            progress.close()
            error(f"cannot write --output {output}: {problem.strerror or problem}")
            return 1
    print(f"{throughput(totals)}; lines in {output}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:       # while reading the input or loading the model: nothing was written
        note("Interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
