"""An example worker that simulates an AI diagnosis: named stages with progress, a
partial ``result`` after each finding, and a final report.

    python examples/diagnosis_worker.py --queue diagnosis   # beside `python server.py`

Input (all optional): ``{"subject": "...", "seconds": 6}`` — how long the whole run takes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.common import run_cli
from worker import Emit, Worker

STAGES = [
    ("ai_fetching", "Fetching AI data...", "history"),
    ("collecting_signals", "Collecting signals...", "signals"),
    ("analysing", "Analysing findings...", "anomalies"),
    ("writing_report", "Writing the report...", None),
]


class DiagnosisWorker(Worker):
    queue = "diagnosis"

    async def run(self, execution: dict[str, Any], emit: Emit) -> Any:
        params = execution.get("input") or {}
        subject = str(params.get("subject", "service"))
        seconds = float(params.get("seconds", 6))
        steps_per_stage = 5
        pause = seconds / (len(STAGES) * steps_per_stage)
        findings: dict[str, Any] = {}
        for index, (stage, text, finding) in enumerate(STAGES):
            await emit.log(f"{subject}: {text}")
            for step in range(steps_per_stage):
                done = (index * steps_per_stage + step + 1) / (len(STAGES) * steps_per_stage)
                await emit.progress(round(99 * done, 1), stage=stage, status_text=text)
                await asyncio.sleep(pause)
            if finding is not None:
                findings[finding] = f"{finding} of {subject} look normal" if index % 2 == 0 else f"2 {finding} found"
                await emit.result({"stage": stage, "finding": findings[finding]})
        return {"subject": subject, "summary": f"Diagnosis of {subject} finished", "findings": findings}


if __name__ == "__main__":
    run_cli(DiagnosisWorker(), "Serve a queue with a simulated diagnosis")
