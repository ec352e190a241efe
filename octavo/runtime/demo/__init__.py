"""The embedded demo pair: a small Llama target and its draft, trained on Shakespeare.

They ship inside the package so that `octavo serve` and `LLM()` answer real requests on a
machine with no hub access, and so that speculative decoding has a real pair to measure.
`tools/train_demo.py` makes them; DATA_CARD.md beside this file says how and from what.

This module only names paths: it imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_TARGET_DIR = DEMO_DIR / "target"
DEMO_DRAFT_DIR = DEMO_DIR / "draft"

DEMO_TARGET_NAME = "octavo-demo"
DEMO_DRAFT_NAME = "octavo-demo-draft"

DEMO_MODELS: dict[str, Path] = {
    DEMO_TARGET_NAME: DEMO_TARGET_DIR,
    DEMO_DRAFT_NAME: DEMO_DRAFT_DIR,
}


def resolve_demo(name: str | None) -> Path | None:
    """The directory of the demo model called `name`, or None when `name` is not a demo name.

    Names are matched exactly (`octavo-demo`, `octavo-demo-draft`), so a local directory or hub
    id that merely contains them is never captured.
    """
    if name is None:
        return None
    return DEMO_MODELS.get(name)
