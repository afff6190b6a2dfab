"""Configuration: one frozen settings object built from the environment and `.env`."""

from config.providers import PRESETS, Preset, preset
from config.settings import Settings, get_settings, load_settings

__all__ = ["PRESETS", "Preset", "Settings", "get_settings", "load_settings", "preset"]
