"""The checkpoint protocol: frames, messages, state machines, page encoding, RAM cache."""
