"""The one error type a user sees for a bad setting (imported by config, the launcher and every stage)."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""
