# Why: the client side of stealth as a library: connect(host, port, profile) -> (socket, session_key).
# Kept import-light (stdlib plus stealth.core.token) because ssh starts it on every login.
from stealth_connect.connect import connect

__all__ = ["connect"]
