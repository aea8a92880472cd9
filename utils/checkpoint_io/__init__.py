"""Checkpoints: the SAT layout on disk, the published key names, loading, saving, merging, conversion, downloads."""
