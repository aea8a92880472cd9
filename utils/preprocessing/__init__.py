"""Text and images -> model inputs: tokenizer, prompt templates, image preprocessing, and the processor that
combines them into one `ModelInputs` (cogvlm.models.inputs)."""
