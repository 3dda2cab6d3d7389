"""The one table of clinical codes for the classes: SNOMED CT concept, display, group.

Sources (each entry says which):
- "DICOM CID 4405": DICOM PS3.16 context group CID 4405 "Skin Disorder", which lists the
  SNOMED CT concept for actinic keratosis.
- "code tables": the concept id and display agree across several independent public
  dermatology code tables (skin-cancer diagnosis pick lists, FHIR exports).
A class with no concept found that way has `snomed=None`: it is still coded with the
project's own code system, never with a guessed SNOMED CT id. Check every concept against
the SNOMED CT release your organisation licenses before clinical use.
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED_SYSTEM = "http://snomed.info/sct"
# The project's own code system for its class names (always present beside SNOMED CT).
LOCAL_SYSTEM = "urn:skincli:class"


@dataclass(frozen=True)
class Concept:
    """A class's clinical coding."""

    label: str                 # the class name as the data names it
    snomed: str | None         # SNOMED CT concept id, or None when none was verified
    display: str               # the SNOMED CT display (or a plain name when snomed is None)
    group: str                 # malignant | premalignant | benign (default triage grouping)
    source: str                # where the code came from (see the module docstring)


CONCEPTS: dict[str, Concept] = {c.label: c for c in (
    Concept("melanoma", "372244006", "Malignant melanoma", "malignant", "code tables"),
    Concept("basal cell carcinoma", "254701007", "Basal cell carcinoma of skin", "malignant",
            "code tables"),
    Concept("squamous cell carcinoma", "254651007", "Squamous cell carcinoma of skin",
            "malignant", "code tables"),
    Concept("actinic keratosis", "201101007", "Actinic keratosis", "premalignant",
            "DICOM CID 4405"),
    Concept("nevus", "400096001", "Melanocytic naevus", "benign", "code tables"),
    # Public tables disagree on these (several ids each), so none is used.
    Concept("seborrheic keratosis", None, "Seborrheic keratosis", "benign", "none agreed"),
    Concept("dermatofibroma", None, "Dermatofibroma", "benign", "none agreed"),
    Concept("vascular lesion", None, "Vascular lesion of skin", "benign", "none agreed"),
    # ISIC's umbrella (solar lentigo, seborrheic and lichen-planus-like keratosis): no single
    # SNOMED CT concept means exactly this.
    Concept("pigmented benign keratosis", None, "Pigmented benign keratosis", "benign",
            "no single concept"),
)}


def concept(label: str) -> Concept:
    """The concept of a class; a class not in the table gets a local-only concept."""
    return CONCEPTS.get(label) or Concept(label, None, label, "benign", "not in the table")


def codings(label: str) -> list[dict[str, str]]:
    """FHIR codings for a class: SNOMED CT when known, then the project's own code."""
    c = concept(label)
    out = []
    if c.snomed:
        out.append({"system": SNOMED_SYSTEM, "code": c.snomed, "display": c.display})
    out.append({"system": LOCAL_SYSTEM, "code": label, "display": label})
    return out
