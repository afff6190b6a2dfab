"""SMTP provider presets, from the article's provider table."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    host: str
    port: int
    security: str
    daily_limit: int | None  # recipients a day on a standard account, when the provider caps it


PRESETS: dict[str, Preset] = {
    "gmail": Preset("smtp.gmail.com", 587, "starttls", 500),
    "outlook": Preset("smtp-mail.outlook.com", 587, "starttls", 300),
    "yahoo": Preset("smtp.mail.yahoo.com", 587, "starttls", 500),
    "sendgrid": Preset("smtp.sendgrid.net", 587, "starttls", None),
    "mailtrap": Preset("smtp.mailtrap.io", 2525, "starttls", None),
}


def preset(name: str) -> Preset:
    """Return the preset for ``name``; ``ses:<region>`` names an Amazon SES region."""
    key = name.strip().lower()
    if key.startswith("ses:"):
        region = key.removeprefix("ses:")
        if not region or not all(part.isalnum() for part in region.split("-")):
            raise ValueError(f"'{name}' needs a region, e.g. ses:eu-west-1")
        return Preset(f"email-smtp.{region}.amazonaws.com", 587, "starttls", None)
    try:
        return PRESETS[key]
    except KeyError:
        known = ", ".join([*PRESETS, "ses:<region>"])
        raise ValueError(f"unknown provider '{name}'; known: {known}") from None
