"""The OpenAI-compatible API server (openai_api.py) and a client example (openai_api_request.py)."""
