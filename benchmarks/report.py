"""What every benchmark script does with its Markdown result: print it, and write it where ``--write`` says."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, write: Path | None) -> None:
    print(text)
    if write:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text, encoding="utf-8")
