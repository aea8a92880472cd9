"""The demos (`python basic_demo/cli_demo_sat.py`, or the console script `cogvlm-cli`)."""
