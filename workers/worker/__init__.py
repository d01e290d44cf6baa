"""The worker role: updates -> bot commands or the pipeline -> outbound entries."""
