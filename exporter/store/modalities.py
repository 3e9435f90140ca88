"""The modalities the portal knows, as data. New ones are added here (or as rows) and seeded.

Keys are the directory names the ingest convention recognises under a patient directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from exporter.store.models import Modality


@dataclass(frozen=True)
class ModalitySpec:
    key: str
    name: str
    short_label: str
    extensions: tuple[str, ...]
    subtypes: tuple[str, ...] = field(default=())
    multi_file: bool = False


DEFAULT_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("cbct", "Cone-beam CT", "CBCT", (".dcm", ".nii", ".nii.gz"), multi_file=True),
    ModalitySpec("ios", "Intraoral scan", "IOS", (".stl", ".ply", ".obj"), ("upper", "lower")),
    ModalitySpec("intraoral-photo", "Intraoral photograph", "IOP", (".jpg", ".jpeg", ".png")),
    ModalitySpec("panoramic", "Panoramic X-ray", "PAN", (".dcm", ".jpg", ".jpeg", ".png")),
    ModalitySpec(
        "cephalometric", "Teleradiography (lateral cephalogram)", "CEPH", (".dcm", ".jpg", ".png")
    ),
    ModalitySpec("facial-photo", "Facial photograph", "FP", (".jpg", ".jpeg", ".png")),
)


def seed_modalities(session: Session) -> dict[str, Modality]:
    """Insert the default modalities that are missing; return all of them by key."""
    existing = {m.key: m for m in session.scalars(select(Modality))}
    for spec in DEFAULT_MODALITIES:
        if spec.key not in existing:
            row = Modality(
                key=spec.key,
                name=spec.name,
                short_label=spec.short_label,
                extensions=list(spec.extensions),
                subtypes=list(spec.subtypes),
                multi_file=spec.multi_file,
                is_active=True,
            )
            session.add(row)
            existing[spec.key] = row
    session.flush()
    return existing


def active_modalities(session: Session) -> dict[str, Modality]:
    """Every active modality by key."""
    return {m.key: m for m in session.scalars(select(Modality).where(Modality.is_active))}
