"""`grok-desktop download`: Grok-2 from the Hugging Face Hub, resumable and verified, with the
plan for this machine and the disk check shown before anything is written (app/download/).

Ctrl-C stops it; the same command resumes it without fetching a byte twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download Grok-2 from the Hugging Face Hub (resumable, "
                                        "verified), optionally preparing it as it arrives")
    p.add_argument("--out", metavar="DIR",
                   help="target folder (default: models/grok-2 in the app's data folder; "
                        "with --keep-prepared-only, models/grok-2-prepared)")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: main)")
    p.add_argument("--repo", default=None, metavar="OWNER/NAME",
                   help="the repo (default: xai-org/grok-2)")
    p.add_argument("--keep-prepared-only", action="store_true",
                   help="prepare (quantize) each source file as soon as it has arrived, "
                        "then delete it: the disk needs the prepared size plus about one file")
    p.add_argument("--quant", choices=("int4", "int8", "bf16"),
                   help="format to prepare with --keep-prepared-only (default: the plan's)")
    p.add_argument("--accept-license", action="store_true",
                   help="accept the Grok 2 Community License without asking (recorded once)")
    p.set_defaults(func=run_download)


def _license(accept_flag: bool) -> None:
    from app.download import license

    if license.accepted():
        return
    print(license.SUMMARY, file=sys.stderr)
    if not accept_flag:
        if not sys.stdin.isatty():
            raise UserError("the Grok 2 Community License must be accepted before downloading: "
                            f"read {license.LICENSE_URL}, then run again with --accept-license")
        answer = input("Accept the Grok 2 Community License? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise UserError("the license was not accepted; nothing was downloaded")
    license.accept()
    print("License accepted (recorded; you will not be asked again).", file=sys.stderr)


def _default_out(prepared_only: bool) -> Path:
    from app import paths

    return paths.data_dir() / "models" / ("grok-2-prepared" if prepared_only else "grok-2")


def run_download(args: argparse.Namespace) -> int:
    from app.download.budget import machine_budgets, propose, size
    from app.download.hub import REPO
    from app.download.pipeline import Request, look, run
    from app.placement import bandwidths

    _license(args.accept_license)
    out = Path(args.out) if args.out else _default_out(args.keep_prepared_only)
    req = Request(out, args.repo or REPO, args.revision, prepared_only=args.keep_prepared_only,
                  quant=args.quant or "int4")
    lk = look(req)
    gpu, cpu = machine_budgets()
    proposal = propose(lk.cfg, gpu, cpu, bandwidths(), args.quant)
    print(proposal.text, file=sys.stderr)
    if args.keep_prepared_only and not args.quant:
        req.quant = proposal.quant if proposal.fits else "int4"
    if lk.repair_note():
        print(lk.repair_note(), file=sys.stderr)
    disk = lk.disk()
    print(disk.line(), file=sys.stderr)
    disk.require()
    print(f"{lk.snapshot.repo}@{lk.snapshot.commit[:12]}: {len(lk.snapshot.files)} files, "
          f"{size(lk.snapshot.total_bytes)} -> {req.out}", file=sys.stderr)
    folder = run(lk, on_progress=_Printer())
    sys.stderr.write("\n")
    what = f"prepared ({req.quant})" if req.prepared_only else "downloaded and verified"
    print(f"{what}: {folder}; open it with grok-desktop --model {folder}")
    return 0


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Printer:
    """A one-line progress display on a terminal; one line per finished file otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.finished: set[str] = set()
        self.last = 0.0

    def __call__(self, p) -> None:
        from app.download.budget import size

        if p.file and p.file_done >= p.file_size and p.file not in self.finished:
            self.finished.add(p.file)
            if not self.tty:
                print(f"{p.stage}: {p.file} ({p.file_size:,} bytes) ok", file=sys.stderr)
        if self.tty and time.monotonic() - self.last > 0.2:
            self.last = time.monotonic()
            pct = 100 * p.done / p.total if p.total else 100
            sys.stderr.write(f"\r{p.stage}: {p.file[:40]:<40} {size(p.file_done)}/"
                             f"{size(p.file_size)} | all {size(p.done)}/{size(p.total)} "
                             f"{pct:5.1f}% {size(p.rate)}/s ETA {_fmt_eta(p.eta_s)}  ")
            sys.stderr.flush()
