"""Catalogue record of a dataset: facts computed from the index plus fields an admin supplies.

The split mirrors HealthDCAT-AP / the EUCAIM public catalogue: what can be derived
from the images (modalities, subjects, ages...) is never typed by hand, and what
cannot (title, terms of use, condition...) is validated before it is published.
"""

from __future__ import annotations

import math
from pathlib import Path

from .index import CatalogError, open_index

#: Descriptive fields an admin supplies, with the vocabulary term each maps to.
CATALOG_FIELDS: tuple[str, ...] = (
    "title",  # dct:title - required
    "description",  # dct:description - what was collected, why, inclusion criteria
    "publisher",  # dct:publisher - the data holder (institution)
    "access_rights",  # dct:accessRights - terms of use / how access is granted
    "condition",  # EUCAIM condition / healthdcatap:healthTheme, e.g. "Lung cancer"
    "interoperability_tier",  # EUCAIM data tier: 1, 2 or 3
    "keywords",  # dcat:keyword - list of strings
    "license",  # dct:license - optional
    "contact_point",  # dcat:contactPoint - optional e-mail or URL
)
EUCAIM_TIERS = (1, 2, 3)
#: The longest title: the dataset row keeps it in a ``String(255)`` column.
MAX_TITLE = 255


def _age_range(low: float | None, high: float | None) -> list[int] | None:
    if low is None or high is None:
        return None
    return [math.floor(low), math.floor(high)]  # completed years, as ages are usually stated


def summarize(index_path: Path) -> dict:
    """Dataset facts from the index: counts, modalities, demographics, date range."""
    conn = open_index(index_path)
    try:

        def values(sql: str) -> list:
            return [row[0] for row in conn.execute(sql)]

        def one(sql: str):
            return conn.execute(sql).fetchone()

        sexes = {"F": 0, "M": 0, "O": 0, "unknown": 0}
        for sex, n in conn.execute("SELECT sex, COUNT(*) FROM patients GROUP BY sex"):
            sexes[sex if sex in sexes else "unknown"] += n
        ages = one("SELECT MIN(age_years), MAX(age_years) FROM files WHERE error IS NULL")
        dates = one("SELECT MIN(study_date), MAX(study_date) FROM studies")
        return {
            "modalities": values("SELECT DISTINCT modality FROM series WHERE modality IS NOT NULL ORDER BY 1"),
            "body_parts": values("SELECT DISTINCT body_part FROM series WHERE body_part IS NOT NULL ORDER BY 1"),
            "manufacturers": values(
                "SELECT DISTINCT manufacturer FROM series WHERE manufacturer IS NOT NULL ORDER BY 1"
            ),
            "num_subjects": one("SELECT COUNT(*) FROM patients")[0],
            "num_studies": one("SELECT COUNT(*) FROM studies")[0],
            "num_series": one("SELECT COUNT(*) FROM series")[0],
            "num_instances": one("SELECT COALESCE(SUM(num_instances), 0) FROM series")[0],
            "sex_distribution": sexes,
            "age_range": _age_range(*ages),
            "study_date_range": list(dates) if dates[0] else None,
            "indexed_at": one("SELECT value FROM meta WHERE key = 'indexed_at'")[0],
        }
    finally:
        conn.close()


def _clean(admin_fields: dict) -> dict:
    unknown = sorted(set(admin_fields) - set(CATALOG_FIELDS))
    if unknown:
        raise CatalogError(f"unknown catalogue field(s) {', '.join(unknown)}; allowed: {', '.join(CATALOG_FIELDS)}")
    record: dict = {}
    for name, value in admin_fields.items():
        if value is None:
            continue
        if name == "interoperability_tier":
            tier = int(value) if isinstance(value, str) and value.strip().isdigit() else value
            if type(tier) is not int or tier not in EUCAIM_TIERS:
                raise CatalogError(f"interoperability_tier must be 1, 2 or 3 (the EUCAIM data tier), got {value!r}")
            record[name] = tier
        elif name == "keywords":
            words = value.split(",") if isinstance(value, str) else value
            if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
                raise CatalogError(f"keywords must be a list of strings or a comma-separated string, got {value!r}")
            record[name] = [w.strip() for w in words if w.strip()]
        elif isinstance(value, str):
            record[name] = value.strip()
        else:
            raise CatalogError(f"catalogue field {name} must be text, got {type(value).__name__}: {value!r}")
    if not record.get("title"):
        raise CatalogError("a catalogue record needs a title, e.g. 'Lung cancer screening CT, 2018-2023'")
    if len(record["title"]) > MAX_TITLE:  # it is the dataset's title too, a String(255) column
        raise CatalogError(f"the title is too long: at most {MAX_TITLE} characters (you wrote "
                           f"{len(record['title'])}); shorten it and put the rest in the description")
    return record


def build_record(admin_fields: dict, summary: dict) -> dict:
    """The published record: validated admin fields plus the computed summary."""
    return {**_clean(admin_fields), **summary}
