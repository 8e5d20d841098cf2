"""Configuration: typed settings read once at start-up."""

from config.settings import Settings, config_errors

__all__ = ["Settings", "config_errors"]
