"""Generation and the chat model the demos talk to."""
