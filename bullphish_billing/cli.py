"""The `bullphish-billing` command: its arguments, its help, and its exit codes.

Exit codes (docs/billing-rules.md): 0 everything billable delivered (or the dry run done);
1 finished, but something was held, rejected or failed; 2 usage or configuration error, one
line, no traceback; 130 stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM, one line. What
`run` and `backfill` do is in commands.py; the modules that command needs are imported when it
runs, so `--help` answers at once.

`run` and `backfill` run their flow in a worker thread, and the main thread handles SIGINT and
SIGTERM (`stopping.py`): the first one asks the run to stop starting new work; the run records
what it has and publishes the analysts' file, and the command stops Prefect's temporary server
(`prefect_server.py`) and exits with 128 + the signal's number. A run that has not finished
STOP_GRACE_S after the signal, or a second signal, ends the command at once, with the same
exit code: what it had not recorded stays pending for the next run, as after a crash.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from bullphish_billing import __version__
from bullphish_billing.dates import check_usage_date, parse_date, yesterday_utc
from bullphish_billing.errors import EXIT_OK, EXIT_USAGE, BillingError, UsageError
from bullphish_billing.text import shown

STOP_GRACE_S = 15.0
"""How long a stopped run may take to record what it has and publish, after the signal."""


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
        "2 usage or configuration error, 130 stopped by Ctrl-C (SIGINT), 143 stopped by "
        "SIGTERM.",
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

    reconcile = commands.add_parser(
        "reconcile",
        help="compare what KaseyaOne holds with what it acknowledged, for a range of dates",
        description="Read what KaseyaOne holds (GET /v1/billing/usage) for every "
        "partner-date of --start..--end that it acknowledged metrics of, and compare it, "
        "metric by metric, with what it acknowledged: match, missing_at_kaseyaone, differs, "
        "unexpected_at_kaseyaone. Every check is recorded (ops.reconciliation, the view "
        "reconciliation_open). It only reports: the next daily run re-sends what is missing "
        "or differs at KaseyaOne (new Idempotency-Key, once), and never deletes what "
        "KaseyaOne holds that we never sent. Exit 0 all clean, 1 differences or a "
        "partner-date KaseyaOne could not be read for, 2 bad input or configuration.",
    )
    reconcile.add_argument("--start", type=_date, required=True, help="first usage date")
    reconcile.add_argument("--end", type=_date, required=True, help="last usage date")
    reconcile.add_argument(
        "--partner",
        dest="partners",
        action="append",
        metavar="ID",
        help="reconcile only this partner (repeatable; default: every partner)",
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

    explain = commands.add_parser(
        "explain",
        help="why a billed number is what it is",
        description="Explain the metrics of one partner-date from the warehouse (opened "
        "read-only, as an analyst's session): per metric, its units and the rule that produced "
        "them, the target records counted and those left out by reason (inactive, quarantined "
        "with each reason, exact duplicates collapsed, conflicting duplicates, organization "
        "archived or held, unknown organization), the previous reported day and the change, "
        "what was sent (batch Idempotency-Key, when, KaseyaOne's answer) and what KaseyaOne "
        "held at the last reconciliation. A partner-date skipped or held says so, with its "
        "reason. The same facts are in the analysts' view metric_explanations. Ids and counts "
        "only: no personal data is stored or shown. Exit 2 for a date or partner never "
        "processed.",
    )
    explain.add_argument("--date", type=_date, required=True, help="usage date YYYY-MM-DD")
    explain.add_argument("--partner", required=True, metavar="ID", help="partner id, p_...")
    explain.add_argument(
        "--organization", metavar="ID", help="only this organization's metrics (o_...)"
    )
    explain.add_argument(
        "--billing-type",
        metavar="TYPE",
        help="only this billing type, e.g. bullphish_id.phishing.per_user",
    )
    explain.add_argument(
        "--json", action="store_true", help="print a JSON document instead of the text"
    )
    explain.add_argument(
        "--targets",
        action="store_true",
        help="list the target ids of each reason (ids only)",
    )

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


def _cmd_reconcile(ns: argparse.Namespace) -> int:
    from bullphish_billing.commands import run_reconcile

    return run_reconcile(ns.start, ns.end, ns.partners)


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


def _cmd_explain(ns: argparse.Namespace) -> int:
    from bullphish_billing.commands import explain_metrics

    return explain_metrics(
        ns.date,
        ns.partner,
        organization_id=ns.organization,
        billing_type=ns.billing_type,
        as_json=ns.json,
        targets=ns.targets,
    )


def _cmd_alerts(ns: argparse.Namespace) -> int:
    from bullphish_billing.alerts import install

    seconds = ns.window_seconds or ns.window_hours * 3600
    installed = install(ns.webhook_url, dt.timedelta(seconds=seconds), ns.payload)
    print(f"alerts installed on {installed.server} (no completed run: {installed.window})")
    return EXIT_OK


COMMANDS = {
    "run": _cmd_run,
    "backfill": _cmd_backfill,
    "reconcile": _cmd_reconcile,
    "sandbox": _cmd_sandbox,
    "demo": _cmd_demo,
    "explain": _cmd_explain,
    "alerts": _cmd_alerts,
}


STOPPABLE = ("run", "backfill")
STOPPED = "what was done is recorded and the analysts' file published; the next run sends the rest"
CUT_SHORT = (
    f"the run did not end within {STOP_GRACE_S:.0f} s and was cut short; the next run sends "
    "what is pending"
)
SECOND_SIGNAL = "a second signal ended it at once; the next run sends what is pending"


def _stop_line(command: str, signum: int, detail: str) -> str:
    from bullphish_billing.stopping import signal_name

    return f"bullphish-billing {command}: stopped by {signal_name(signum)}: {detail}"


def _exit_now(command: str, signum: int, detail: str) -> None:
    """End the command at once: one line, the temporary Prefect server stopped, exit
    128 + signum. What the run had not recorded stays pending for the next run."""
    from bullphish_billing import prefect_server

    print(_stop_line(command, signum, detail), file=sys.stderr, flush=True)
    try:
        prefect_server.stop(timeout_s=5.0)
    finally:
        sys.stdout.flush()
        os._exit(128 + signum)


def run_stoppable(command: str, work: Callable[[], int]) -> int:
    """Run `work` (a command that runs a flow) in a worker thread while this, the main
    thread, handles SIGINT and SIGTERM; return its exit code, or 128 + the signal's number.
    Stops Prefect's temporary server at the end, whatever happened."""
    from bullphish_billing import prefect_server, stopping

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["code"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    def on_signal(signum: int, frame: object) -> None:
        if not stopping.request_stop(signum):  # a second signal: no more waiting
            _exit_now(command, signum, SECOND_SIGNAL)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = threading.Thread(target=target, name=f"bullphish-billing-{command}", daemon=True)
        worker.start()
        cut_off: float | None = None
        while worker.is_alive():
            worker.join(0.2)  # short steps: the handlers run between them
            signum = stopping.stop_signal()
            if signum is None:
                continue
            if cut_off is None:
                cut_off = time.monotonic() + STOP_GRACE_S
            elif time.monotonic() >= cut_off:
                _exit_now(command, signum, CUT_SHORT)
        prefect_server.flush_prefect()  # before its server goes: nothing is sent after
        prefect_server.stop()
        signum = stopping.stop_signal()
        if signum is not None:
            print(_stop_line(command, signum, STOPPED), file=sys.stderr, flush=True)
            return 128 + signum
    finally:
        prefect_server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["code"]  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    from bullphish_billing.stopping import Stopped

    try:
        if ns.command in STOPPABLE:
            return run_stoppable(ns.command, lambda: COMMANDS[ns.command](ns))
        return COMMANDS[ns.command](ns)
    except BillingError as exc:  # UserError: exit 2; RunFailure: exit 1
        print(f"bullphish-billing {ns.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Stopped as exc:
        print(f"bullphish-billing {ns.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bullphish-billing: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
