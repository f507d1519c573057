"""Quarantine a rejected batch: the original bytes, validation.json, and an HTML report (GX Data Docs)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from retrainer.io.tables import copy_file, write_json

REPORT_FILE = "validation.json"
HTML_FILE = "report.html"
DATA_DOCS_DIR = "data_docs"


def locate_quarantine(root: Path, quarantine_dir: str, batch_id: str) -> Path:
    """The folder a batch is quarantined in: <root>/<quarantine_dir>/<batch-id>."""
    return root / quarantine_dir / batch_id


def quarantine_batch(source: Path, directory: Path, report: dict[str, Any]) -> Path:
    """Copy the batch byte-for-byte and write its validation.json and report.html; returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    copy_file(source, directory / source.name)  # a cut-off copy would pass for the original
    write_json(report, directory / REPORT_FILE)
    (directory / HTML_FILE).write_text(render_html_report(report, directory), encoding="utf-8")
    return directory


def write_data_docs(context: Any, result: Any, directory: Path) -> Path:
    """Render one GX validation result as a Data Docs site under directory/data_docs; returns index.html."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    site = f"quarantine-{directory.name}"
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
        run_id=result.meta["run_id"],
        batch_identifier=result.batch_id,
    )
    context.validation_results_store.set(key, result)
    context.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str((directory / DATA_DOCS_DIR).resolve()),
            },
        },
    )
    try:
        context.build_data_docs(site_names=[site], resource_identifiers=[key])
    finally:
        context.delete_data_docs_site(site)
        context.validation_results_store.remove_key(key)
    return directory / DATA_DOCS_DIR / "index.html"


def render_rows(entries: list[dict[str, Any]]) -> str:
    """HTML table rows for failure/warning/skipped entries."""
    rows = []
    for e in entries:
        detail = e.get("reason") or e.get("error") or json.dumps(e.get("examples") or e.get("observed"))
        cells = (
            e.get("check"),
            e.get("expectation"),
            e.get("column"),
            e.get("severity"),
            e.get("unexpected_count"),
            detail,
        )
        tds = "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in cells)
        rows.append(f"<tr>{tds}</tr>")
    return "\n".join(rows) or '<tr><td colspan="6">none</td></tr>'


def render_html_report(report: dict[str, Any], directory: Path) -> str:
    """A self-contained HTML summary of validation.json (links the GX Data Docs when they were built)."""
    head = (
        "<tr><th>check</th><th>expectation</th><th>column</th><th>severity</th><th>unexpected</th><th>detail</th></tr>"
    )
    groups = (("Blocking failures", "failures"), ("Warnings", "warnings"), ("Skipped", "skipped"))
    sections = "".join(
        f"<h2>{title} ({len(entries)})</h2><table>{head}{render_rows(entries)}</table>"
        for title, entries in ((t, report.get(k) or []) for t, k in groups)
    )
    docs = directory / DATA_DOCS_DIR / "index.html"
    link = f'<p><a href="{DATA_DOCS_DIR}/index.html">GX Data Docs</a></p>' if docs.exists() else ""
    title = html.escape(
        f"Batch {report.get('batch_id')} ({report.get('file')}): {'passed' if report.get('passed') else 'quarantined'}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(str(report.get('reason') or ''))}</p>{link}{sections}"
        f"<h2>Drift</h2><pre>{html.escape(json.dumps(report.get('drift') or {}, indent=1))}</pre>"
        "</body></html>\n"
    )
