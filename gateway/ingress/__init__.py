"""The ingress role: webhook app, getUpdates poller and the uvicorn server around them."""
