"""Weight-only quantisation of a loaded model, kept outside the model code (see weight_only.py; options.py holds
the command-line settings)."""
