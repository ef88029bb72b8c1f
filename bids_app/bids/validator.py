"""Run the official BIDS validator (``bids-validator-deno``, offline) and summarise it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bids_app.errors import InputDataError, ResourceError

VALIDATOR = "bids-validator-deno"


@dataclass
class ValidationResult:
    """Validator findings grouped by issue code: ``{code: [(location, detail), ...]}``."""

    errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    warnings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, severity: str = "error", max_codes: int = 5) -> str:
        """One line per issue code: code, count and the first location with its detail."""
        issues = self.errors if severity == "error" else self.warnings
        lines = []
        for code, hits in list(issues.items())[:max_codes]:
            loc, detail = hits[0]
            where = f"{loc}" + (f" ({detail})" if detail else "")
            more = f" and {len(hits) - 1} more" if len(hits) > 1 else ""
            lines.append(f"  {code}: {where}{more}")
        if len(issues) > max_codes:
            lines.append(f"  ... and {len(issues) - max_codes} more issue code(s)")
        return "\n".join(lines)


def find_validator() -> str:
    """Path to ``bids-validator-deno``: next to this Python first, then on PATH."""
    local = Path(sys.executable).parent / VALIDATOR
    if local.exists():
        return str(local)
    found = shutil.which(VALIDATOR)
    if not found:
        raise ResourceError(
            f"the BIDS validator ({VALIDATOR}) is not installed.",
            "Install it with `pip install bids-validator-deno`, or pass --skip_bids_validator.",
        )
    return found


def parse_report(report: dict) -> ValidationResult:
    """Group the issues of a ``--format json`` report by severity and code."""
    result = ValidationResult()
    grouped = {"error": defaultdict(list), "warning": defaultdict(list)}
    for issue in report.get("issues", {}).get("issues", []):
        severity = issue.get("severity", "warning")
        if severity not in grouped:
            continue
        lines = (issue.get("issueMessage") or "").strip().splitlines()
        first = lines[0] if lines and not lines[0].startswith("Field description") else ""
        detail = " ".join(x for x in (issue.get("subCode"), first) if x)
        grouped[severity][issue.get("code", "UNKNOWN")].append((issue.get("location", ""), detail))
    result.errors = dict(grouped["error"])
    result.warnings = dict(grouped["warning"])
    return result


def run_validator(bids_dir: str | Path, timeout: float = 600) -> ValidationResult:
    """Validate ``bids_dir`` and return the grouped findings (never raises on findings)."""
    cmd = [find_validator(), "--format", "json", str(bids_dir)]
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ResourceError(
            f"the BIDS validator did not finish within {timeout:.0f} s on {bids_dir}.",
            "Pass --skip_bids_validator to run without it.",
        ) from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ResourceError(
            f"the BIDS validator failed on {bids_dir}: {tail[0]}",
            "Pass --skip_bids_validator to run without it.",
        ) from None
    return parse_report(report)


def validate_or_fail(bids_dir: str | Path, log) -> ValidationResult:
    """Run the validator; log warnings, raise :class:`InputDataError` with a summary on errors."""
    result = run_validator(bids_dir)
    if result.warnings:
        n = sum(len(v) for v in result.warnings.values())
        log.info("BIDS validator: %d warning(s) in %d categories:\n%s", n, len(result.warnings),
                 result.summary("warning"))
    if not result.ok:
        n = sum(len(v) for v in result.errors.values())
        raise InputDataError(
            f"{bids_dir} is not valid BIDS: the BIDS validator found {n} error(s):\n{result.summary('error')}\n",
            "Fix them (run `bids-validator-deno` for details) or pass --skip_bids_validator.",
        )
    return result
