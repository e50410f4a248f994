"""Typed configurations (pydantic) that load from and save to YAML.

Every config class derives from :class:`Config`: unknown keys are errors, values are validated on
assignment, and :class:`ConfigError` names the file, the key path and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from petsynth.utils.files import atomic_write_text

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration file or mapping is invalid; the message names the source and each bad key."""


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


class Config(BaseModel):
    """Base class of all petsynth configs: strict keys, validated, YAML round trip."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, source: str = "<mapping>") -> C:
        """Validate a mapping; raise :class:`ConfigError` naming ``source`` and each bad key."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"invalid configuration in {source}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_describe(err, source)) from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """Load and validate a YAML file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe mapping."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The YAML text; also written atomically to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text
