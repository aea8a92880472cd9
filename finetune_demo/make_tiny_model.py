"""Write the seeded, randomly initialised small CogVLM that the captcha demo fine-tunes from scratch on a CPU.

    python finetune_demo/make_tiny_model.py --out checkpoints/captcha-tiny-init [--seed 0]

The configuration is cogvlm.models.config.CAPTCHA_TINY_CONFIG; the tokenizer is the test fixture's (vocab 512, digits
split into single tokens), copied next to the weights so that the folder is a complete checkpoint.
"""
import argparse
import shutil
from pathlib import Path

from cogvlm import PACKAGE_ROOT

TOKENIZER = PACKAGE_ROOT / "checkpoints" / "captcha-tiny" / "tokenizer.model"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from cogvlm.models.config import CAPTCHA_TINY_CONFIG
    from cogvlm.utils.checkpoint_io.loading import build_model, save_model
    from cogvlm.utils.training.finetune import init_weights

    model = build_model(CAPTCHA_TINY_CONFIG, device="cpu")
    init_weights(model, args.seed)
    out = save_model(model, args.out)
    shutil.copy(TOKENIZER, out / TOKENIZER.name)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return out


if __name__ == "__main__":
    main()
