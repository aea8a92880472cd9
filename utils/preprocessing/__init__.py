"""Text and images -> model inputs: tokenizer, prompt templates, image preprocessing."""
