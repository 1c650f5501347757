"""Dataset catalogue: a DICOM header index per dataset and the record published from it."""

from .index import CatalogError, IndexReport, index_dataset, list_series, open_index
from .metadata import CATALOG_FIELDS, build_record, summarize

__all__ = [
    "CATALOG_FIELDS",
    "CatalogError",
    "IndexReport",
    "build_record",
    "index_dataset",
    "list_series",
    "open_index",
    "summarize",
]
