"""Agent dispatch: confirmed instructions delivered to the agent API, every step an event."""

from kroma.agents.dispatcher import Dispatcher, DispatchOptions, default_worker_id

__all__ = ["DispatchOptions", "Dispatcher", "default_worker_id"]
