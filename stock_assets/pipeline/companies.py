"""Parse and validate `CompanyNames/top_companies.txt` into the ordered list of files to read.

The course's file is one line of single-quoted names separated by commas:
`'tmusp.us.csv', 'mcv.us.csv', …`. Newlines between entries and unquoted or double-quoted names are
accepted too. Order is output order; duplicates are dropped (first one wins) and reported; a name
that is not a plain file name directly under `Stocks/` (letters, digits, `_`, `.` and `-` only,
no leading dot, ending in `.csv`) is refused with a reason, so nothing can escape the folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A file name directly under Stocks/: no path separators, no leading dot, ends in .csv.
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.csv$")


class FilterFileError(ValueError):
    """The filter file cannot be used at all (blank, not text, over the limit)."""


@dataclass(frozen=True)
class InvalidEntry:
    entry: str
    reason: str


@dataclass(frozen=True)
class CompanyFilter:
    """The validated filter: which files to read, in which order, and what was dropped."""

    files: list[str]
    duplicates: list[str] = field(default_factory=list)
    invalid: list[InvalidEntry] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return len(self.files) + len(self.duplicates) + len(self.invalid)


def company_name(file_name: str) -> str:
    """`tmusp.us.csv` → `tmusp`: the file name up to its first dot."""
    return file_name.split(".", 1)[0]


# The table's company_name column is VARCHAR(56) (the course's schema): a longer name would
# make the COPY fail after the CSV was already written.
MAX_COMPANY_NAME = 56


def _entry_problem(name: str) -> str | None:
    if "/" in name or "\\" in name or ".." in name:
        return "a path, not a file name: only files directly under Stocks/ may be read"
    if not name.endswith(".csv"):
        return "not a .csv file name (it must end in '.csv', lower case)"
    if not _SAFE_FILE_NAME.match(name):
        return "contains characters outside letters, digits, '_', '-' and '.'"
    if len(company_name(name)) > MAX_COMPANY_NAME:
        return (
            f"its company name (up to the first '.') is over {MAX_COMPANY_NAME} characters, "
            "longer than the table's company_name column"
        )
    return None


def _split_entries(text: str) -> list[str]:
    entries = []
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip().strip("'\"").strip()
        if entry:
            entries.append(entry)
    return entries


def parse_company_filter(data: bytes, max_entries: int = 1000) -> CompanyFilter:
    """Turn the filter file's bytes into a `CompanyFilter`, or raise `FilterFileError`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FilterFileError(f"filter file is not UTF-8 text: {err}") from err
    if "\x00" in text:
        raise FilterFileError("filter file contains NUL bytes: it is not a text file")
    entries = _split_entries(text)
    if not entries:
        raise FilterFileError("filter file names no files (it is empty or only whitespace)")

    files: list[str] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    invalid: list[InvalidEntry] = []
    for entry in entries:
        problem = _entry_problem(entry)
        if problem:
            invalid.append(InvalidEntry(entry, problem))
        elif entry in seen:
            duplicates.append(entry)
        else:
            seen.add(entry)
            files.append(entry)

    if len(files) > max_entries:
        raise FilterFileError(
            f"filter file names {len(files)} distinct files; the limit is {max_entries} per run "
            "(raise max_files in the run config if this is intended)"
        )
    if not files:
        raise FilterFileError(
            f"filter file has {len(entries)} entries but none is a usable file name: "
            + "; ".join(f"{i.entry!r}: {i.reason}" for i in invalid[:5])
        )
    return CompanyFilter(files=files, duplicates=duplicates, invalid=invalid)
