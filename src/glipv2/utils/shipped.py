"""Model folders that ship inside the package (`src/glipv2/weights/`), addressable by name.

`glipv2.load_model("glipv2_tiny_shapes")`, `GLIPv2.from_pretrained("glipv2_tiny_shapes")` and every
`--model` option accept these names, so the shipped weights work the same from a clone, an editable
install and a wheel. A local folder of the same name in the working directory wins (a path is a path).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_SHIPPED_MODEL = "glipv2_tiny_shapes"


def list_shipped_models() -> list[str]:
    """The names of the model folders shipped with the package (each has a config.json)."""
    if not SHIPPED_WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_WEIGHTS_DIR.iterdir() if (p / "config.json").is_file())


def shipped_model_dir(name: str) -> Path | None:
    """The folder of a shipped model, or None when `name` is not one (or is a local path)."""
    if Path(name).exists() or name not in list_shipped_models():
        return None
    return SHIPPED_WEIGHTS_DIR / name
