"""A project's airlock rules: which files may be requested at all, checked per file before and at
submission, so that a researcher sees every violation at once instead of one per try.

The defaults are deliberately narrow (results-like file types, small sizes, two reviews); an admin
widens them per project with ``vre project set-airlock-rules``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

from sqlalchemy.orm import Session

from ..db import AirlockRules, Project, utcnow
from ..errors import VREError
from ..projects import get_project, parse_bytes

DEFAULT_EXTENSIONS = ("csv", "tsv", "txt", "md", "json", "png", "jpg", "jpeg", "svg", "pdf", "ipynb")
_EXT_RE = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,15}$")
#: Names in a release: printable, no control characters, no path tricks.
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Rules:
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_file_bytes: int = 50 * 1024**2
    max_request_bytes: int = 200 * 1024**2
    max_files: int = 100
    max_csv_rows: int = 50_000
    reviews_required: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extensions"] = list(self.extensions)
        return d


DEFAULTS = Rules()


def rules_of(project: Project, db: Session) -> Rules:
    row = db.get(AirlockRules, project.id)
    if row is None:
        return DEFAULTS
    return Rules(tuple(row.extensions), row.max_file_bytes, row.max_request_bytes, row.max_files,
                 row.max_csv_rows, row.reviews_required)


def parse_extensions(text: str) -> tuple[str, ...]:
    exts = tuple(dict.fromkeys(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip()))
    for e in exts:
        if not _EXT_RE.match(e):
            raise VREError(f"invalid file extension {e!r}: write e.g. csv,png,json")
    if not exts:
        raise VREError("give at least one allowed file extension (e.g. csv,png)")
    return exts


def set_rules(db: Session, project_slug: str, *, extensions: str | None = None, max_file: str | None = None,
              max_request: str | None = None, max_files: int | None = None, max_csv_rows: int | None = None,
              reviews: int | None = None) -> Rules:
    """Change a project's rules (what is not given stays); returns the new rules."""
    project = get_project(db, project_slug)
    rules = rules_of(project, db)
    if extensions is not None:
        rules = replace(rules, extensions=parse_extensions(extensions))
    for name, raw in (("max_file_bytes", max_file), ("max_request_bytes", max_request)):
        if raw is not None:
            value = parse_bytes(raw)
            if value <= 0:
                raise VREError(f"{name.replace('_bytes', '').replace('_', '-')} must be a size such as 50M")
            rules = replace(rules, **{name: value})
    if max_files is not None:
        if not 1 <= max_files <= 100_000:
            raise VREError("--max-files must be between 1 and 100000")
        rules = replace(rules, max_files=max_files)
    if max_csv_rows is not None:
        if max_csv_rows < 1:
            raise VREError("--max-csv-rows must be at least 1")
        rules = replace(rules, max_csv_rows=max_csv_rows)
    if reviews is not None:
        if not 1 <= reviews <= 10:
            raise VREError("--reviews must be between 1 and 10 (independent reviews per request)")
        rules = replace(rules, reviews_required=reviews)
    if rules.max_file_bytes > rules.max_request_bytes:
        raise VREError("the largest file may not exceed the largest request (--max-file <= --max-request)")
    row = db.get(AirlockRules, project.id)
    if row is None:
        row = AirlockRules(project_id=project.id)
        db.add(row)
    row.extensions = list(rules.extensions)
    row.max_file_bytes, row.max_request_bytes = rules.max_file_bytes, rules.max_request_bytes
    row.max_files, row.max_csv_rows, row.reviews_required = rules.max_files, rules.max_csv_rows, rules.reviews_required
    row.updated_at = utcnow()
    db.flush()
    return rules


def extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.strip(".") else ""


def name_problems(name: str) -> list[str]:
    """Why a file name cannot be released as it is (empty: fine)."""
    problems = []
    if _BAD_NAME.search(name):
        problems.append("the name contains control characters; rename the file")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        problems.append("the name is not valid UTF-8; rename the file")
    if any(part in ("", ".", "..") for part in name.split("/")):
        problems.append("the name has empty, '.' or '..' parts")
    if len(name.encode("utf-8", "replace")) > 1000:
        problems.append("the name is longer than 1000 bytes")
    return problems


def file_problems(rules: Rules, name: str, size: int | None) -> list[str]:
    """Violations of the rules that name and size alone show (rows and content: ``content_problems``)."""
    problems = name_problems(name)
    ext = extension(name)
    if ext not in rules.extensions:
        problems.append(f"file type {'.' + ext if ext else '(no extension)'} is not allowed in this project "
                        f"(allowed: {', '.join('.' + e for e in rules.extensions)})")
    if size is not None and size > rules.max_file_bytes:
        problems.append(f"{size} bytes is more than the project's limit of {rules.max_file_bytes} bytes per file")
    return problems


@dataclass
class ContentCheck:
    """What is learnt while a file streams through (see ``vre.airlock.store.freeze``)."""

    rules: Rules
    name: str
    rows: int = 0
    head: bytes = b""
    last: bytes = b""
    problems: list[str] = field(default_factory=list)

    def feed(self, chunk) -> None:
        """One chunk (bytes or a memoryview) of the file, in order."""
        if len(self.head) < 132:
            self.head += bytes(chunk[:132 - len(self.head)])
        if extension(self.name) in ("csv", "tsv"):
            self.rows += bytes(chunk).count(b"\n")
        if len(chunk):
            self.last = bytes(chunk[-1:])

    def finish(self) -> list[str]:
        if len(self.head) >= 132 and self.head[128:132] == b"DICM":
            self.problems.append("the file is DICOM (image data never leaves the environment through the airlock)")
        if extension(self.name) in ("csv", "tsv"):
            rows = self.rows + (1 if self.last and self.last != b"\n" else 0)
            if rows > self.rules.max_csv_rows:
                self.problems.append(f"{rows} rows is more than the project's limit of {self.rules.max_csv_rows} "
                                     "rows per table")
        return self.problems
