#!/usr/bin/env bash
# Rebuild checkpoints/captcha-tiny, the embedded default: a 1 M-parameter CogVLM trained from scratch on a CPU
# to read 4-digit captchas, with this repository's fine-tuning pipeline (SAT training_main + DeepSpeed).
#   bash finetune_demo/train_captcha_tiny.sh [WORK_DIR]        # about 15 minutes on 2 cores
# A smaller run (the tests use one) from the environment: TRAIN_ITERS, CAPTCHA_COUNT, BATCH_SIZE, EVAL_INTERVAL,
# LOG_INTERVAL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=${1:-./captcha-work}
iters=${TRAIN_ITERS:-2500}
eval_interval=${EVAL_INTERVAL:-500}
mkdir -p "$work"

python finetune_demo/make_tiny_model.py --out "$work/init" --seed 0
python finetune_demo/make_captcha_dataset.py --out "$work/all" --count "${CAPTCHA_COUNT:-9000}" --seed 1
python utils/split_dataset.py --source "$work/all" --target "$work/split" --seed 0
# larger batches than ds_config_cpu.json's: the image signal beats the noise sooner
python - "$work/ds.json" "${BATCH_SIZE:-64}" <<'PY'
import json, sys
config = json.load(open("finetune_demo/ds_config_cpu.json"))
config["train_micro_batch_size_per_gpu"] = int(sys.argv[2])
json.dump(config, open(sys.argv[1], "w"), indent=2)
PY
python finetune_demo/finetune_cogvlm_demo.py --from_pretrained "$work/init" --max_length 100 --train everything \
    --experiment-name captcha --train-iters "$iters" --train-data "$work/split/train" \
    --valid-data "$work/split/valid" --split 1. --eval-interval "$eval_interval" --eval-iters 5 --eval-batch-size 8 \
    --save "$work/runs" --save-interval "$iters" --log-interval "${LOG_INTERVAL:-100}" \
    --deepspeed_config "$work/ds.json" \
    --warmup 0.02 --lr-decay-style cosine --seed 2023 --skip-init --merged_save "$work/trained"
python finetune_demo/evaluate.py --from_pretrained "$work/trained" --data "$work/split/test"
echo "copy $work/trained to checkpoints/captcha-tiny to make it the default"
