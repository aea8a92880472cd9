"""Boxes in answers, the grounding and agent prompt templates, CogAgent agent answers."""
