"""Print the settings table for the README (``python scripts/settings_table.py``)."""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from core.settings import Settings


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, f"{prefix}{name.upper()}__")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "(secret)" if isinstance(default, SecretStr) else repr(default)
        out.append((f"{prefix}{name.upper()}", shown, (field.description or "").strip()))
    return out


def main() -> None:
    print("| variable | default |")
    print("|---|---|")
    for var, default, _ in rows(Settings, "BINAUDIT_"):
        print(f"| `{var}` | `{default}` |")


if __name__ == "__main__":
    main()
