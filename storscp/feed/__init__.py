"""The feed process: replays the stored-instance feed's history to consumers."""
