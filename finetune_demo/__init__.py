"""Fine-tuning and evaluation scripts (`bash finetune_demo/finetune_cogvlm_lora.sh`,
`python finetune_demo/evaluate.py`)."""
