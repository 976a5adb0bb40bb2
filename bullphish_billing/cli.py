"""The `bullphish-billing` command: its arguments, its help, and its exit codes.

Exit codes (docs/billing-rules.md): 0 everything billable delivered (or the dry run done);
1 finished, but something was held, rejected or failed; 2 usage or configuration error, one
line, no traceback. What `run` and `backfill` do is in commands.py; the modules that command
needs are imported when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from bullphish_billing import __version__
from bullphish_billing.dates import check_usage_date, parse_date, yesterday_utc
from bullphish_billing.errors import EXIT_OK, EXIT_USAGE, BillingError, UsageError
from bullphish_billing.text import shown


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _date(text: str) -> dt.date:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bullphish-billing",
        description="Bill BullPhish ID usage to partners' PSAs through KaseyaOne: a daily "
        "Prefect flow that extracts partners, organizations and targets into a DuckDB "
        "warehouse, validates them, computes the billing metrics and reports them.",
        epilog="Configuration comes from the environment or a .env file: BULLPHISH_API_URL, "
        "BULLPHISH_API_TOKEN, KASEYAONE_API_URL, KASEYAONE_CLIENT_ID, KASEYAONE_CLIENT_SECRET, "
        "BILLING_WAREHOUSE (default data/warehouse.duckdb), BILLING_HOLD_THRESHOLD "
        "(default 0.01), BILLING_WAREHOUSE_LOCK_WAIT_S (default 120: seconds a stage waits "
        "while another process holds the warehouse); see the README for the rest. "
        "Exit codes: 0 all delivered, 1 something held/rejected/failed, "
        "2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="bill one usage date (default yesterday, UTC)",
        description="Run the daily billing flow for one usage date: extract, validate, "
        "aggregate and report to KaseyaOne. Re-running a date sends only what changed.",
    )
    run.add_argument("--date", type=_date, help="usage date YYYY-MM-DD (default: yesterday, UTC)")
    _partner_and_dry_run(run)

    backfill = commands.add_parser(
        "backfill",
        help="bill every date of a range, oldest first",
        description="Run the daily flow for every date from --start to --end (inclusive), "
        "oldest first, a few dates at a time, with a progress bar; each date as of that day. "
        "Dates an earlier run delivered are not billed again, and numbers already "
        "acknowledged are not re-sent, so a backfill that was stopped can simply be started "
        "again. A date that fails does not stop the others (exit 1).",
    )
    backfill.add_argument("--start", type=_date, required=True, help="first usage date")
    backfill.add_argument("--end", type=_date, required=True, help="last usage date")
    _partner_and_dry_run(backfill)
    backfill.add_argument(
        "--force",
        action="store_true",
        help="bill every date again: re-extract, recompute and re-send every metric",
    )
    backfill.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        metavar="N",
        help="dates billed at the same time (default 2)",
    )

    sandbox = commands.add_parser(
        "sandbox",
        help="serve both sandbox APIs on 127.0.0.1 (8701, 8702)",
        description="Serve contract-true sandboxes of the BullPhish ID API (port 8701) and the "
        "KaseyaOne billing API (port 8702) with generated, deterministic data and optional "
        "fault injection. Point BULLPHISH_API_URL / KASEYAONE_API_URL at them. Ctrl-C stops.",
    )
    from bullphish_billing.sandbox.cli_options import add_arguments

    add_arguments(sandbox)

    demo = commands.add_parser(
        "demo",
        help="start the sandbox, run the daily flow against it, show the result",
        description="Start the sandbox APIs and a local Prefect server, run the daily flow "
        "for yesterday against them, print a summary and how to look at the result in the "
        "Prefect UI and the DuckDB warehouse, then stop what it started. Needs no "
        "configuration.",
    )
    demo.add_argument("--date", type=_date, help="usage date (default: yesterday, UTC)")

    alerts = commands.add_parser(
        "alerts",
        help="install the alerts (Prefect automations) on the Prefect server",
        description="Alerts are Prefect automations, kept on a Prefect server: see "
        "automations.yaml and the README.",
    )
    alerts_commands = alerts.add_subparsers(dest="alerts_command", metavar="ACTION")
    alerts_commands.required = True
    install = alerts_commands.add_parser(
        "install",
        help="create or update the notification block and the automations",
        description="On the Prefect server of PREFECT_API_URL, save a webhook notification "
        "block and create (or update, found by name) the automations of automations.yaml: one "
        "notifies when a daily-billing or backfill run ends Failed, Crashed or TimedOut, one "
        "when no daily-billing run completed within the window. The webhook URL is kept only "
        "in the block, as a secret, and never printed.",
    )
    install.add_argument(
        "--webhook-url",
        required=True,
        metavar="URL",
        help="where notifications are POSTed as JSON (a Slack incoming "
        "webhook, a Teams workflow webhook, any endpoint taking JSON)",
    )
    install.add_argument(
        "--format",
        dest="payload",
        choices=("slack", "teams"),
        default="slack",
        help="the JSON posted: slack (`text`, also for any "
        "endpoint) or teams (an Adaptive Card); default slack",
    )
    install.add_argument(
        "--window-hours",
        type=_positive_float,
        default=26.0,
        metavar="H",
        help="notify when no daily-billing run completed for this long (default 26)",
    )
    install.add_argument("--window-seconds", type=_positive_float, help=argparse.SUPPRESS)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text)}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {shown(text)}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _partner_and_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partner",
        dest="partners",
        action="append",
        metavar="ID",
        help="bill only this partner (repeatable; default: every partner)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="compute and store the metrics, send nothing"
    )


def _cmd_run(ns: argparse.Namespace) -> int:
    from bullphish_billing.commands import run_date

    day = ns.date or yesterday_utc()
    _check_date(day)
    return run_date(day, ns.partners, ns.dry_run)


def _check_date(day: dt.date) -> None:
    try:
        check_usage_date(day)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cmd_backfill(ns: argparse.Namespace) -> int:
    from bullphish_billing.backfill import check_range
    from bullphish_billing.commands import run_backfill

    check_range(ns.start, ns.end, ns.concurrency)
    return run_backfill(
        ns.start, ns.end, ns.partners, ns.dry_run, force=ns.force, concurrency=ns.concurrency
    )


def _cmd_sandbox(ns: argparse.Namespace) -> int:
    from bullphish_billing.sandbox import serve
    from bullphish_billing.sandbox.cli_options import config_from_args

    try:
        serve(
            config_from_args(ns), bullphish_port=ns.bullphish_port, kaseyaone_port=ns.kaseyaone_port
        )
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise UsageError(
            f"cannot listen on 127.0.0.1:{ns.bullphish_port}/{ns.kaseyaone_port}: "
            f"{exc.strerror or exc} (another sandbox running? choose other ports)"
        ) from None
    return EXIT_OK


def _cmd_demo(ns: argparse.Namespace) -> int:
    from bullphish_billing.demo import run_demo

    return run_demo(ns.date)


def _cmd_alerts(ns: argparse.Namespace) -> int:
    from bullphish_billing.alerts import install

    seconds = ns.window_seconds or ns.window_hours * 3600
    installed = install(ns.webhook_url, dt.timedelta(seconds=seconds), ns.payload)
    print(f"alerts installed on {installed.server} (no completed run: {installed.window})")
    return EXIT_OK


COMMANDS = {
    "run": _cmd_run,
    "backfill": _cmd_backfill,
    "sandbox": _cmd_sandbox,
    "demo": _cmd_demo,
    "alerts": _cmd_alerts,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except BillingError as exc:  # UserError: exit 2; RunFailure: exit 1
        print(f"bullphish-billing {ns.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bullphish-billing: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
