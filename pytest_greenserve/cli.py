"""The ``greenserve`` command.

* ``greenserve report PATH... [--out DIR]``: re-render reports from saved runs (run
  directories or samples.jsonl files); several runs, from one or several machines, are merged
  into one analysis grouped by machine.
* ``greenserve paper RUN_DIR...``: the paper's headline ratios against the run's, each with its
  95% interval, and where the run disagrees (``analysis/paper.py``; the figures: ``data/paper.json``).
* ``greenserve models``: list the model registry.
* ``greenserve serve --model NAME|PATH --config onnx-cpu``: serve one model in one configuration
  over HTTP (FastAPI under uvicorn; the ``serve`` extra), see ``serving/server.py``.

Bad input gives one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .results import SamplesError, read_run

EXIT_USAGE = 2


class InputError(Exception):
    """Unusable input; the message is one line meant for the user."""


def merge_meta(metas: list[dict], run_ids: list[str]) -> dict:
    infos = [m.get("machine_info") for m in metas if isinstance(m.get("machine_info"), dict)]
    versions = {}
    for m in metas:
        if isinstance(m.get("versions"), dict):
            versions.update(m["versions"])
    meta = {"run_id": run_ids[0] if len(run_ids) == 1 else "merged: " + ", ".join(run_ids),
            "machine_info": infos[0] if len(infos) == 1 else infos, "versions": versions,
            "options": {"sources": ", ".join(run_ids)}}
    # every run's registered metrics (run.json "metrics"), the first run's entry for a name
    metrics = {}
    for m in metas:
        items = m.get("metrics") if isinstance(m.get("metrics"), list) else []
        for item in items:
            if isinstance(item, dict) and item.get("name") not in metrics:
                metrics[item.get("name")] = item
    if metrics:
        meta["metrics"] = list(metrics.values())
    return meta


def fill_categories(rows: list[dict]) -> list[dict]:
    """Old runs' samples have no ``category``: take the model's size category from the model registry."""
    from .models import REGISTRY

    for r in rows:
        if "category" not in r:
            spec = REGISTRY.get(r.get("model"))
            r["category"] = spec.category if spec else None
    return rows


def cmd_report(args) -> int:
    from .report import terminal_summary, write_reports

    paths = [Path(p) for p in args.paths]
    rows, metas, run_ids = [], [], []
    for p in paths:
        r, m = read_run(p)  # SamplesError (a ValueError) names file:line; main() prints it
        if not r:
            raise InputError(f"{p}: no samples")
        rows += fill_categories(r)
        metas.append(m)
        run_ids.append(str(m.get("run_id") or (p.name if p.is_dir() else p.parent.name)))
    if args.out:
        out = Path(args.out)
    else:
        first = paths[0] if paths[0].is_dir() else paths[0].parent
        out = first.resolve().parent / f"merged-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(out.name.split("~")[0] + f"~{n}")
    written = write_reports(rows, out, merge_meta(metas, run_ids))
    for line in terminal_summary(rows, written["html"]):
        print(line)
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0


def cmd_paper(args) -> int:
    from .analysis.paper import HEADERS, compare, disagreements, paper_facts, table_rows
    from .report.tables import text_table
    from .results import mark_error_prone

    rows = []
    for p in (Path(x) for x in args.paths):
        r, _ = read_run(p)
        if not r:
            raise InputError(f"{p}: no samples")
        rows += fill_categories(r)
    mark_error_prone(rows)
    facts = paper_facts()
    compared, notes = compare(rows, facts)
    print(f"The paper: {facts['citation']}")
    print(f"Its setup: {facts['setup']}.")
    print("Ratios are A/B of medians (the paper's over its 12 models; per-category figures are published for "
          "TORCH-CUDA only); energy is gross CPU + GPU (energy_total_j).")
    if compared:
        for line in text_table(HEADERS, table_rows(compared)):
            print(line)
    words = disagreements(compared)
    if words:
        print("Where this run disagrees with the paper:")
        for line in words:
            print(f"- {line}")
    elif compared:
        print("This run disagrees with none of the paper's ratios it could check.")
    for note in notes:
        print(f"note: {note}")
    return 0


def cmd_models(args) -> int:
    from .models import REGISTRY

    from .report.tables import text_table

    rows = [[m.name, m.hub_id or "(replica only)", m.params or "—", str(m.category) if m.category else "—",
             m.architecture] for m in REGISTRY.values()]
    for line in text_table(["name", "hub id", "size", "category", "architecture"], rows):
        print(line)
    return 0


def cmd_serve(args) -> int:
    from .serving.server import ServeError, serve

    try:
        return serve(args)
    except ServeError as exc:
        raise InputError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it short)
        print(f"greenserve: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greenserve", description="Reports and model registry of pytest-greenserve.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    rep = sub.add_parser("report", help="re-render reports from saved runs, merging several (grouped by machine)")
    rep.add_argument("paths", nargs="+", metavar="PATH", help="run directories or samples.jsonl files")
    rep.add_argument("--out", metavar="DIR", default=None,
                     help="output directory (default: merged-<timestamp> beside the first run)")
    rep.set_defaults(func=cmd_report)
    pap = sub.add_parser("paper", help="the paper's headline ratios against saved runs', with their noise")
    pap.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories or samples.jsonl files")
    pap.set_defaults(func=cmd_paper)
    mod = sub.add_parser("models", help="list the model registry (name, hub id, size, category, architecture)")
    mod.set_defaults(func=cmd_models)
    srv = sub.add_parser("serve", help="serve one model in one configuration over HTTP (FastAPI + uvicorn)")
    from .serving.server import add_serve_arguments  # argparse only: fastapi is imported when serving

    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except (InputError, SamplesError) as exc:
        print(f"greenserve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("greenserve: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"greenserve: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
