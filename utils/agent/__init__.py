"""The CogAgent-9B-20241220 GUI agent: its query, its answers and the runtime that acts on them.

protocol.py builds the query (task, history, platform, answer format); action_space.py lists the published
operations and their arguments; answer.py parses an answer into a typed step (and writes one back); executor.py
turns a step into input events, behind a confirmation gate for sensitive operations.
"""
