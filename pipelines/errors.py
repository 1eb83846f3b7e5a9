"""Errors of the pipeline layer.

Picklable, like every raygate error (see :mod:`actors.errors`): a job's
errors cross from the pipeline actor to the driver.

    RaygateError
    └── PipelineError
        ├── InvalidOutput       a stage got no valid answer in its attempts
        ├── ResultsFileError    the output file holds a line that is not a raygate result
        ├── UnusablePath        an input or output path the job cannot use
        └── JobNotRetried       a job over HTTP asked to run again while it runs, or when done
"""

from __future__ import annotations

from actors.errors import RaygateError


class PipelineError(RaygateError):
    """Base of the pipeline layer's errors."""


class InvalidOutput(PipelineError):
    def __init__(self, stage: str, service_id: str, attempts: int, reason: str) -> None:
        super().__init__(stage, service_id, attempts, reason)
        self.stage = stage
        self.service_id = service_id
        self.attempts = attempts
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.stage} of service {self.service_id!r}: no valid answer in "
            f"{self.attempts} attempts; last: {self.reason}"
        )


class ResultsFileError(PipelineError):
    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path, self.line, self.reason = path, line, reason

    def __str__(self) -> str:
        return (
            f"{self.path}, line {self.line}: not a raygate result ({self.reason}); "
            "use another --out file, or fix or remove that line"
        )


class UnusablePath(PipelineError):
    """An input or output path the job cannot use, found before any work starts."""

    def __init__(self, role: str, path: str, reason: str) -> None:
        super().__init__(role, path, reason)
        self.role, self.path, self.reason = role, path, reason

    def __str__(self) -> str:
        return f"{self.role} {self.path}: {self.reason}"


class JobNotRetried(PipelineError):
    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(job_id, why)
        self.job_id, self.why = job_id, why

    def __str__(self) -> str:
        return f"pipeline job {self.job_id!r} is not run again: {self.why}"
