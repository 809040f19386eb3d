"""report: ``report.html``, one self-contained offline page of the run (``engine/report.py``):
the map, the themes, their hierarchy, the near-duplicates and the run's own record. Rewritten at
every run, as the manifest is."""

from __future__ import annotations

from typing import Any

from theme_engine.engine.docstore import run_documents
from theme_engine.engine.report import REPORT_FILE, render_report

from ..state import fingerprint
from .base import RunContext, Section, Stage


class Report(Stage):
    name = "report"
    outputs = (REPORT_FILE,)
    settings = {"report": Section("report")}
    always_runs = True  # it shows this run's record

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("report", ctx.fp("write"), self.settings_part(ctx.cfg))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        rc = ctx.cfg.report
        if not rc.enabled:
            return {"device": "none", "skipped": "report.enabled = false"}
        control = ctx.control("report")
        control.report(0, 1)
        record = render_report(
            ctx.result_dir, manifest=ctx.manifest(), max_points=rc.max_points, seed=ctx.cfg.seed, excerpt_chars=rc.excerpt_chars,
            stored=run_documents(ctx.out), folder=ctx.out.resolve().name,
        )  # fmt: skip
        control.report(1, 1)
        return {"device": "cpu", **{k: v for k, v in record.items() if k not in ("path", "seconds")}}
