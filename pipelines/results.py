"""The output file: one JSON line per service, appended the moment it completes.

A line goes out in one ``write`` on a file opened for appending, then to disk
(fsync), so a run killed at any point leaves whole lines, except at worst a
torn last one, which the next run cuts off before it reads what is done. A
service with a line (ok or failed) is skipped by the next run of the same
command; ``drop_failed`` lets one retry the failures. When a run finishes,
the file is rewritten in input order (to a temporary file, then renamed), so
the same input gives the same file however the services interleaved.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from pipelines.errors import ResultsFileError, UnusablePath
from pipelines.plateau import ServiceRecord


def check_input(path: Path) -> None:
    """Raise UnusablePath unless ``path`` is a readable file."""
    if not path.exists():
        raise UnusablePath("input", str(path), "no such file")
    if not path.is_file():
        raise UnusablePath("input", str(path), "not a file")
    if not os.access(path, os.R_OK):
        raise UnusablePath("input", str(path), "not readable")


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def check_writable(self) -> None:
        """Raise UnusablePath unless records can be appended to the file (or it can be made)."""
        folder = self.path.parent
        if self.path.is_dir():
            raise UnusablePath("--out", str(self.path), "is a folder; name a file")
        if not folder.is_dir():
            raise UnusablePath("--out", str(self.path), f"the folder {folder} does not exist")
        # Rewriting in order makes a temporary file beside it, so the folder must be writable.
        if not os.access(folder, os.W_OK) or (
            self.path.exists() and not os.access(self.path, os.W_OK)
        ):
            raise UnusablePath("--out", str(self.path), "not writable")

    def load(self) -> dict[str, ServiceRecord]:
        """The records already written, after cutting off a torn last line."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # a run was killed mid-line: drop the fragment
            with self.path.open("r+b") as file:
                file.truncate(keep)
            data = data[:keep]
        records: dict[str, ServiceRecord] = {}
        for number, line in enumerate(data.decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = ServiceRecord.model_validate_json(line)
            except ValidationError as invalid:
                raise ResultsFileError(str(self.path), number, invalid.errors()[0]["msg"]) from None
            records[record.service_id] = record
        return records

    def append(self, record: ServiceRecord) -> None:
        line = (record.model_dump_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def drop_failed(self) -> int:
        """Remove failed records so that the next run retries them; how many were removed."""
        records = self.load()
        kept = [r for r in records.values() if r.status == "ok"]
        self._replace(kept)
        return len(records) - len(kept)

    def rewrite_in_order(self, service_ids: Sequence[str]) -> None:
        """Input order first; records of services no longer in the input keep their place after."""
        records = self.load()
        position = {service_id: i for i, service_id in enumerate(service_ids)}
        ordered = sorted(records.values(), key=lambda r: position.get(r.service_id, len(position)))
        self._replace(ordered)

    def _replace(self, records: Sequence[ServiceRecord]) -> None:
        directory = self.path.parent
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as file:
                for record in records:
                    file.write((record.model_dump_json() + "\n").encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
