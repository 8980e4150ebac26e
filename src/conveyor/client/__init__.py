"""The user-facing client API: Client, Future, wait, as_completed."""
