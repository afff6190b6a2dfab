"""Configuration: one frozen settings object built from the environment and `.env`."""

from emailq.config.providers import PRESETS, Preset, preset
from emailq.config.settings import Settings, get_settings, load_settings

__all__ = ["PRESETS", "Preset", "Settings", "get_settings", "load_settings", "preset"]
