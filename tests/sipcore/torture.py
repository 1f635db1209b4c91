"""The RFC 4475 / RFC 5118 torture corpus from ../shared/sip-torture, loaded with its index."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(
    os.environ.get("DURCHWAHL_TORTURE_DIR", Path(__file__).resolve().parents[3] / "shared" / "sip-torture")
)


@dataclass(frozen=True)
class TortureCase:
    name: str
    rfc: str
    section: str
    group: str
    syntax: str
    expect: tuple[str, ...]
    title: str
    handling: str

    @property
    def data(self) -> bytes:
        return (CORPUS / f"{self.name}.dat").read_bytes()


def load_cases() -> list[TortureCase]:
    with (CORPUS / "index.tsv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        TortureCase(
            name=row["name"],
            rfc=row["rfc"],
            section=row["section"],
            group=row["group"],
            syntax=row["syntax"],
            expect=tuple(row["expect"].split("|")),
            title=row["title"],
            handling=row["handling"],
        )
        for row in rows
    ]
