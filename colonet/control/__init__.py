"""The JSON-lines control socket: protocol (pure), server and client."""
