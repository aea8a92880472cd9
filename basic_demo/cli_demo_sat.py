"""Chat about an image from the command line (the published cli_demo_sat.py flags, plus --image/--query).

    python basic_demo/cli_demo_sat.py                                  # the embedded captcha reader
    python basic_demo/cli_demo_sat.py --from_pretrained cogvlm-chat-v1.1 --local_tokenizer PATH --bf16
    python basic_demo/cli_demo_sat.py --image cat.png --query "What is in the image?"      # one-shot
    python basic_demo/cli_demo_sat.py --from_pretrained glm-4v-9b --query "Hello"    # text-only (the 9B models)
    torchrun --nproc-per-node=2 basic_demo/cli_demo_sat.py ...          # split across 2 processes (model parallel)

Interactive: an image path or URL, then queries; "clear" starts over with a new image, "stop" or end of input
ends. With GLM-4V-9B or CogAgent-9B an empty image line starts a text-only chat (and --query may go without
--image); CogVLM and CogAgent-18B need an image, as in the published demo. Bad input gets a one-line error and the
loop goes on. Ctrl-C stops the current answer; at a prompt it ends
the session (exit status 130).

Output: answers, prompts and the session's own lines on stdout; errors, notes and the libraries' start-up notices
on stderr. The one-shot mode prints the answer alone on stdout.

Exit status: 0; 1 after an error; 130 after Ctrl-C. Under torchrun a start-up error ends every rank
with 0 after its one-line error, because torchrun follows any other status with a traceback of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from cogvlm import PACKAGE_ROOT, warn_if_other_checkout
from cogvlm.utils.inference.messages import describe, message
from cogvlm.utils.inference.options import add_decoding_arguments
from cogvlm.utils.quantization.options import add_quant_arguments

DEFAULT_CHECKPOINT = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"     # a small CogVLM that reads captchas
DEFAULT_VERSION = "chat"
STOP, CLEAR = "stop", "clear"
EXIT_INTERRUPTED = 130          # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The published sampling flags (their defaults: greedy), as the demos take them."""
    parser.add_argument("--max_length", type=int, default=2048, help="max tokens of prompt + answer")
    parser.add_argument("--top_p", type=float, default=0.4, help="nucleus sampling mass")
    parser.add_argument("--top_k", type=int, default=1, help="top-k sampling; 1 is greedy")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="penalty for repeated tokens")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The published flags that choose and load the model (read by load_chat)."""
    parser.add_argument("--version", default=None, choices=["chat", "vqa", "chat_old", "base"],
                        help=f"prompt template (default {DEFAULT_VERSION}); a checkpoint's text_processor_version "
                             f"overrides it")
    add_quant_arguments(parser)
    parser.add_argument("--from_pretrained", default=str(DEFAULT_CHECKPOINT),
                        help="checkpoint folder, or a published name under $SAT_HOME (e.g. cogvlm-chat-v1.1)")
    parser.add_argument("--local_tokenizer", default="lmsys/vicuna-7b-v1.5",
                        help="tokenizer.model file or folder (default: the checkpoint's own, else the HF cache)")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    add_decoding_arguments(parser)


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, chinese: bool = False) -> None:
    """parser.error (exit status 2, one line) on flags of add_sampling_arguments / add_model_arguments that do not
    go together."""
    if args.fp16 and args.bf16:
        parser.error(message("fp16_and_bf16", chinese))
    if args.max_length < 2:
        parser.error(message("max_length_too_small", chinese))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser)
    parser.add_argument("--chinese", action="store_true", help="Chinese interface")
    add_model_arguments(parser)
    parser.add_argument("--stream_chat", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--output_dir", default="output", help="where answers with boxes are drawn (PNG)")
    parser.add_argument("--image", help="one-shot: the image path or URL (with --query)")
    parser.add_argument("--query", help="one-shot: the question; prints the answer and exits (without --image: a "
                                        "text-only question, for GLM-4V-9B and CogAgent-9B)")
    args = parser.parse_args(argv)
    if args.image is not None and args.query is None:
        parser.error(message("image_and_query", args.chinese))
    if args.query is not None and args.image is None and not answers_without_image(args.from_pretrained):
        parser.error(message("image_and_query", args.chinese))
    check_common_arguments(parser, args, args.chinese)
    return args


def answers_without_image(from_pretrained: str) -> bool:
    """Whether the checkpoint is of a model that also chats without an image (GLM-4V-9B, CogAgent-9B), told from
    its model_config.json before torch is imported; a checkpoint not on disk yet (a name still to download) is
    taken to need one, as the CogVLM checkpoints do."""
    from cogvlm.models.config import is_glm4_checkpoint
    from cogvlm.utils.checkpoint_io.sat_home import local_model_config

    model_config = local_model_config(from_pretrained)
    return model_config is not None and is_glm4_checkpoint(model_config)


class Console:
    """Input on rank 0, broadcast to every rank; output from rank 0 only."""

    def __init__(self, chinese: bool):
        self.chinese = chinese
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ      # set by torchrun for its workers
        self.echo = not sys.stdin.isatty()     # piped input: echo it so each answer starts its own line
        self.line_editing = False

    def say(self, text: str = "", end: str = "\n") -> None:
        if self.rank == 0:
            print(text, end=end, flush=True)

    def note(self, text: str) -> None:
        """A status line beside the answers (stderr, so that stdout holds what the model says)."""
        if self.rank == 0:
            print(text, file=sys.stderr, flush=True)

    def error(self, problem: BaseException | str) -> None:
        text = problem if isinstance(problem, str) else describe(problem, self.chinese)
        self.note(message("error_prefix", self.chinese) + text)

    def startup_failure_status(self, status: int = 1) -> int:
        """The exit status after a start-up error (reported on rank 0): `status`, except under torchrun.

        torchrun answers any non-zero exit of a rank with a ChildFailedError traceback and report after the user's
        line (torch/distributed/launcher/api.py raises it whatever the rank says). A start-up error met before the
        process group exists is met alike by every rank (same flags, same files) and no rank waits for another,
        so there every rank ends with 0 and the user's line stands alone. Once the group exists, a failing rank
        exits with `status` so that torchrun stops the ranks that would wait for it."""
        if not self.under_torchrun:
            return status
        import torch.distributed as dist

        return status if dist.is_available() and dist.is_initialized() else 0

    def from_first_rank(self, produce):
        """Run `produce` on rank 0 only (e.g. reading an image that only its machine may see) and give every
        rank its result, or raise its ValueError on every rank, so that no rank waits alone in a collective."""
        box = [None, None]
        if self.rank == 0:
            try:
                box[0] = produce()
            except ValueError as problem:
                box[1] = problem                    # the exception itself: its class words it (see describe)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise box[1]
        return box[0]

    @property
    def recoverable(self) -> tuple[type[Exception], ...]:
        """Errors after which the loop goes on. Input errors (ValueError) are the same on every rank because
        the input is; a failure inside the model (RuntimeError) may hit one rank only, so under torchrun it ends
        the process and torchrun stops the others instead of leaving them waiting."""
        return (ValueError, RuntimeError) if self.world_size == 1 else (ValueError,)

    def _enable_line_editing(self) -> None:
        """At a terminal, `input()` without the readline module writes its prompt to stderr (CPython's fallback
        line reader); with it, the prompt goes to stdout beside the answers, and the line can be edited."""
        if self.line_editing or not (sys.stdin.isatty() and sys.stdout.isatty()):
            return
        try:
            import readline  # noqa: F401 - imported for its effect on input()
        except ImportError:                 # e.g. Windows: see _read
            return
        self.line_editing = True

    def _read(self, prompt: str) -> str:
        self._enable_line_editing()
        if self.line_editing or not sys.stdin.isatty():    # input() writes the prompt to stdout itself
            return input(prompt)
        print(prompt, end="", flush=True)
        return input()

    def ask(self, key: str) -> str | None:
        """A stripped input line, or None at end of input."""
        line = None
        if self.rank == 0:
            prompt = message(key, self.chinese)
            try:
                line = self._read(prompt).strip()
                if self.echo:
                    print(line, flush=True)
            except EOFError:
                print(flush=True)
        if self.world_size > 1:
            import torch.distributed as dist

            box = [line]
            dist.broadcast_object_list(box, src=0)
            line = box[0]
        return line


def answer(chat, console: Console, query, history, image, sampling, stream: bool) -> str:
    if not stream:
        return chat.answer(query, history, image, sampling)
    pieces = []
    for piece in chat.stream(query, history, image, sampling):
        if not pieces:
            console.say(message("model_prefix", console.chinese), end="")
        pieces.append(piece)
        console.say(piece, end="")
    console.say("" if pieces else message("model_prefix", console.chinese))
    return "".join(pieces).strip()


class BoxDrawer:
    """After an answer with [[x0,y0,x1,y1]] boxes: draw them, with their phrases, on the image (rank 0)."""

    def __init__(self, console: Console, output_dir: str):
        self.console, self.output_dir, self.count = console, Path(output_dir), 0

    def __call__(self, picture, response: str) -> None:
        from cogvlm.utils.grounding.boxes import draw_boxes, ground_phrases, parse_boxes

        if self.console.rank != 0 or picture is None or not parse_boxes(response):     # None: a text-only chat
            return
        self.count += 1
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = draw_boxes(picture, ground_phrases(response), self.output_dir / f"answer_{self.count}.png")
        except OSError as problem:                    # an unwritable --output_dir must not end the chat
            self.console.error(message("boxes_not_saved", self.console.chinese, folder=self.output_dir,
                                       detail=describe(problem)))
            return
        self.console.say(message("boxes_drawn", self.console.chinese, path=path))


def interactive(chat, console: Console, sampling, stream: bool, draw: BoxDrawer) -> None:
    from cogvlm.utils.preprocessing.image_processor import load_image

    console.say(message("welcome", console.chinese))
    text_only_allowed = chat.answers_without_image
    while True:
        source = console.ask("image_prompt_optional" if text_only_allowed else "image_prompt")
        if source is None or source == STOP:
            return
        if source == CLEAR:
            continue
        picture = image = None                  # an empty line, where allowed: a text-only chat
        try:
            if source or not text_only_allowed:
                picture = console.from_first_rank(lambda: load_image(source))
                image = chat.preprocess(picture)
        except ValueError as problem:
            console.error(problem)
            continue
        history: list[tuple[str, str]] = []
        while True:
            query = console.ask("user_prompt")
            if query is None or query == STOP:
                return
            if query == CLEAR:
                break
            try:
                response = answer(chat, console, query, history, image, sampling, stream)
            except console.recoverable as problem:          # too long, empty, or a failure inside the model
                console.error(problem)
                continue
            except KeyboardInterrupt:
                if console.world_size > 1:      # the other ranks are inside this answer's collectives: end them all
                    raise
                if stream:
                    console.say()               # end the partial answer's line
                console.note(message("answer_stopped", console.chinese))
                continue                        # the stopped turn is not part of the history
            if not stream:
                console.say(message("model_prefix", console.chinese) + response)
            draw(picture, response)
            history.append((query, response))


def load_chat(args, console: Console):
    """The ChatModel of the flags, or None after a one-line error. Library notices printed while importing and
    loading (DeepSpeed's "Setting accelerator to CPU" goes to stdout) are sent to stderr: stdout carries the
    answers. DeepSpeed's log handler keeps the stream it was created with, so its later notices go there too."""
    with contextlib.redirect_stdout(sys.stderr):
        import torch

        from cogvlm.utils.inference.chat import ChatModel
        from cogvlm.utils.quantization.weight_only import QuantConfig

        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            quant = QuantConfig.from_args(args)
            # Under torchrun every process holds one model-parallel shard, as in the published demo.
            return ChatModel.from_pretrained(args.from_pretrained, args.local_tokenizer,
                                             args.version or DEFAULT_VERSION, dtype, device,
                                             model_parallel_size=console.world_size, quant=quant,
                                             compile=args.compile, prefill_dtype=args.prefill_dtype)
        except ValueError as problem:              # checkpoint, tokenizer, configuration or quantisation errors
            console.error(problem)
            return None


def one_shot(chat, console: Console, args, sampling, draw: BoxDrawer) -> int:
    from cogvlm.utils.preprocessing.image_processor import load_image

    picture = image = None                      # no --image: a text-only question (parse_args allowed it)
    try:
        if args.image is not None:
            picture = console.from_first_rank(lambda: load_image(args.image))
            image = chat.preprocess(picture)
        response = chat.answer(args.query, [], image, sampling)
    except console.recoverable as problem:
        console.error(problem)
        return 1
    console.say(response)
    draw(picture, response)
    return 0


def run(args, console: Console) -> int:
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found

    missing = checkpoint_not_found(args.from_pretrained)       # before the seconds it takes to import torch and SAT
    if missing is not None:
        console.error(message("checkpoint_error", args.chinese, detail=missing))
        return console.startup_failure_status()
    chat = load_chat(args, console)
    if chat is None:
        return console.startup_failure_status()
    from cogvlm.utils.inference.generation import SamplingConfig

    if args.version is not None and args.version != chat.version:
        console.note(message("version_overridden", args.chinese, version=chat.version, requested=args.version))
    sampling = SamplingConfig(max_length=args.max_length, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    draw = BoxDrawer(console, args.output_dir)
    if args.query is not None:
        console.note(message("version", args.chinese, version=chat.version))
        return one_shot(chat, console, args, sampling, draw)
    console.say(message("version", args.chinese, version=chat.version))
    interactive(chat, console, sampling, args.stream_chat, draw)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(args.chinese)
    try:
        return run(args, console)
    except KeyboardInterrupt:      # Ctrl-C at a prompt, a second one during an answer, or while loading: quit
        console.say()
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
