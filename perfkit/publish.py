"""`perfkit publish RUN_DIR DEST`: a suite run as a published report, small enough to keep in git.

Copies what a reader needs and nothing that grows with the sample: the executed notebooks as HTML
(figures inside), the run's summary.json / suite.json / sample.json and each notebook's JSON records;
never the runs/ folders (shards, telemetry), the sample FASTA, PNGs (inside the HTML) or the executed
.ipynb (same content as the HTML). Writes COMMIT, COMMAND and GPUS beside them, and a README.md made
from the run's own records: verdict, every criterion with its measured value and target, notebook times.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from perfkit.errors import UserError

TOP_FILES = ("summary.json", "suite.json", "sample.json")


def report_files(run_dir: Path) -> list[Path]:
    """The files of a suite run that a published report holds (paths relative to `run_dir`)."""
    files = [Path(name) for name in TOP_FILES if (run_dir / name).exists()]
    files += sorted(p.relative_to(run_dir) for p in run_dir.glob("*.html"))
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != "runs"):
        files += sorted(p.relative_to(run_dir) for p in folder.glob("*.json"))  # not folder/runs/...
    return files


def criteria_lines(summary: dict) -> list[str]:
    """One line per criterion: status, name, measured vs target, and why when it is not a PASS."""
    lines = []
    for row in summary.get("criteria", []):
        measured = "–" if row.get("measured") is None else f"{row['measured']:.4g}"
        unit = f" {row['unit']}" if row.get("unit") else ""
        why = f" — {row['reason']}" if row.get("reason") and row.get("status") != "PASS" else ""
        lines.append(
            f"{row['status']:>12}  {row['name']}: {measured}{unit} (target {row['comparison']} "
            f"{row['target']:g}){why}"
        )
    return lines


def readme(run_dir: Path, *, command: str, commit: str, gpus: list[str]) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    suite = json.loads((run_dir / "suite.json").read_text()) if (run_dir / "suite.json").exists() else {}
    rows = ["| criterion | target | measured | status |", "|---|---|---|---|"]
    for row in summary.get("criteria", []):
        measured = "–" if row.get("measured") is None else f"{row['measured']:.4g}"
        status = row["status"] + (
            f" ({row['reason']})" if row.get("reason") and row["status"] != "PASS" else ""
        )
        rows.append(
            f"| {row['name']} | {row['comparison']} {row['target']:g} {row.get('unit') or ''} | "
            f"{measured} | {status} |"
        )
    times = ", ".join(
        f"{stem} {entry['seconds']:.0f} s ({entry['status']})"
        for stem, entry in suite.get("notebooks", {}).items()
        if entry.get("seconds") is not None
    )
    parts = {e["earlier_call"] for e in suite.get("notebooks", {}).values() if e.get("earlier_call")}
    notebook_s = sum(e.get("seconds") or 0 for e in suite.get("notebooks", {}).values())
    # a run in parts: the last part's wall is not the total
    total = (
        f"{len(parts) + 1} calls, notebooks {notebook_s:.0f} s"
        if parts
        else f"total {suite.get('seconds', 0):.0f} s"
    )
    return "\n".join(
        [
            f"# Suite run `{summary.get('params_name')}` on {len(gpus)} GPU(s): verdict **{summary.get('verdict')}**",
            "",
            f"- commit: {commit}",
            f"- command: `{command}`",
            f"- GPUs: {'; '.join(gpus) or 'none (CPU)'}",
            f"- notebooks: {times}; {total}",
            "- files: the suite's own output, copied unchanged by `perfkit publish`: executed notebooks as HTML "
            "(figures inside), summary.json, suite.json, sample.json and each notebook's JSON records. Left out: "
            "runs/ (shards, telemetry), the sample FASTA, PNGs (inside the HTML), the executed .ipynb.",
            "- weights: seeded random for every model the suite runs (the nucleotide model and the classifier "
            "always; ESM-2 unless the params set embed.weights). Vectors and calls mean nothing biologically; the "
            "performance figures stand. Each notebook's HTML opens with the same banner.",
            "",
            *rows,
            "",
        ]
    )


def publish(run_dir, dest, *, command: str, commit: str | None = None) -> dict:
    """Copy a finished suite run's report files into `dest` (which must not exist or be empty)."""
    from perfkit.environment import environment

    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / "summary.json").exists():
        raise UserError(
            f"{run_dir} has no summary.json: not a finished suite run",
            "pass the --out folder of a `perfkit suite` run whose 06_summary completed",
        )
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} already holds files", "publish into a new folder")
    suite = json.loads((run_dir / "suite.json").read_text()) if (run_dir / "suite.json").exists() else {}
    env = suite.get("environment") or environment()  # as recorded when the suite ran, else this machine's now
    commit = commit or env["commit"] or "unknown"
    gpus = [f"{i}, {name}, driver {env['driver']}" for i, name in enumerate(env["gpus"])]
    files = report_files(run_dir)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, dest / rel)
    (dest / "COMMIT").write_text(commit + "\n")
    (dest / "COMMAND").write_text(command + "\n")
    (dest / "GPUS").write_text("\n".join(gpus) + ("\n" if gpus else "none (CPU)\n"))
    (dest / "README.md").write_text(readme(run_dir, command=command, commit=commit, gpus=gpus))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"dest": str(dest), "files": len(files) + 4, "bytes": size}
