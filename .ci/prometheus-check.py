#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against a real Prometheus.

Starts the real stack from the debug binaries in --bin-dir (a sync-service on
SQLite in a scratch directory, a gateway, and a scheduled reconcile pass
against a fake Clerk Backend API served from this script), a real Prometheus
server scraping both metrics endpoints every second with ops/alerts.yml
loaded, and drives a short load through it: signed deliveries from
`clerk-sync-bench ingest`, a few a retry cannot fix (quarantined), a few with
bad signatures, an unsynced event type, organizations and directory queries.
Then, through Prometheus's HTTP API:

- both targets are up, and the rule groups loaded and evaluate without error;
- every expression of every panel target in ops/grafana/clerk-sync.json (the
  dashboard's variables set to "All", $__rate_interval to 1m) and every
  variable query parses and returns data, except the ones in NO_DATA_EXPECTED;
- every clerk_sync_* metric name the dashboard names is one the binaries
  expose (so `x or vector(0)` cannot hide a misspelt name);
- every rule ops/alerts.yml names is loaded and evaluates without error, its
  expression parses, and every clerk_sync_* name in it is exposed.

Python 3 standard library only. Every process it starts is stopped at the end,
whatever happens; the whole run is bounded (about 15 s on a 2-core machine).

Usage: .ci/prometheus-check.py --bin-dir target/debug [--prometheus prometheus]
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "clerk-sync.json"
ALERTS = ROOT / "ops" / "alerts.yml"

# What Grafana would put for its built-in variables during the check.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

# Panel expressions allowed to return nothing after the short run, each with
# the reason. Empty today: the run causes every series the dashboard shows.
NO_DATA_EXPECTED: dict[str, str] = {}

# Every step is bounded; the whole check must finish well inside CI's patience.
DEADLINE_SECS = 150

CLERK_KEY = "sk_test_prometheusCheck0123456789"


class CheckFailed(Exception):
    """A failure already explained by its message."""


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def wait_until(what: str, predicate, timeout: float, interval: float = 0.2):
    """Polls predicate() until it returns something truthy; fails after timeout."""
    end = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}"
                      + (f" (last error: {last_error})" if last_error else ""))


# --- A fake Clerk Backend API, for one reconcile pass -----------------------

def clerk_user(user_id: str, created_at: int) -> dict:
    """A Clerk user object as the Backend API and webhooks send it."""
    return {
        "id": user_id, "object": "user", "username": None,
        "first_name": "Check", "last_name": user_id[-4:],
        "image_url": "https://img.clerk.com/x", "has_image": False,
        "primary_email_address_id": f"idn_{user_id}",
        "primary_phone_number_id": None, "primary_web3_wallet_id": None,
        "password_enabled": True, "two_factor_enabled": False,
        "email_addresses": [{
            "id": f"idn_{user_id}", "object": "email_address",
            "email_address": f"{user_id}@example.com",
            "verification": {"status": "verified", "strategy": "email_code",
                             "attempts": None, "expire_at": None},
            "linked_to": [],
        }],
        "phone_numbers": [], "web3_wallets": [], "external_accounts": [],
        "external_id": None, "public_metadata": {}, "private_metadata": {},
        "unsafe_metadata": {}, "banned": False, "locked": False,
        "created_at": created_at, "updated_at": created_at,
        "last_sign_in_at": None, "last_active_at": None,
    }


def start_fake_clerk(users: list[dict]) -> http.server.ThreadingHTTPServer:
    """Serves GET /v1/users (starting_after paging), /v1/users/count and
    /v1/users/{id} behind the bearer key; any other list is empty, so a
    release that also lists organizations still completes its pass."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args):
            pass

        def answer(self, status: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.headers.get("authorization") != f"Bearer {CLERK_KEY}":
                return self.answer(401, {"errors": [{"message": "Unauthorized"}]})
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/v1/users":
                listed = users
                if "starting_after" in query:
                    ids = [u["id"] for u in users]
                    after = query["starting_after"]
                    listed = users[ids.index(after) + 1:] if after in ids else []
                return self.answer(200, listed[: int(query.get("limit", "500"))])
            if url.path == "/v1/users/count":
                return self.answer(200, {"object": "total_count", "total_count": len(users)})
            if url.path.startswith("/v1/users/"):
                user_id = urllib.parse.unquote(url.path.removeprefix("/v1/users/"))
                for user in users:
                    if user["id"] == user_id:
                        return self.answer(200, user)
                return self.answer(404, {"errors": [{"code": "resource_not_found"}]})
            if url.path.endswith("/count"):
                return self.answer(200, {"object": "total_count", "total_count": 0})
            return self.answer(200, {"data": [], "total_count": 0} if "organization" in url.path else [])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- Webhooks ---------------------------------------------------------------

def signed_headers(secret: str, msg_id: str, body: bytes) -> dict:
    """Svix headers for body: v1 = base64(HMAC-SHA256(id.timestamp.body))."""
    timestamp = str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {"svix-id": msg_id, "svix-timestamp": timestamp,
            "svix-signature": "v1," + base64.b64encode(mac.digest()).decode()}


def post(url: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- Prometheus's HTTP API --------------------------------------------------

class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def api(self, path: str, **params) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = http_get(url, timeout=10)
        except urllib.error.HTTPError as error:  # 400 for a parse error, with a JSON body
            body = error.read()
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's $name, ${name} and ${name:format} with the given values."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise CheckFailed(f"expression uses an unknown variable ${name}: {expr}")
        return variables[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def dashboard_variables(dashboard: dict) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Values for the dashboard's variables (All for query variables) and the
    PromQL each query variable's label_values(...) amounts to."""
    values = dict(BUILTINS)
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable["type"] == "datasource":
            values[name] = "prometheus"
        elif variable["type"] == "query":
            values[name] = variable.get("allValue") or ".*"
            query = variable.get("definition") or variable["query"]
            if isinstance(query, dict):
                query = query["query"]
            match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", query)
            if not match:
                raise CheckFailed(f"variable {name}: expected label_values(metric, label), got {query}")
            queries.append((f"variable ${name}", f"group by ({match.group(2)}) ({match.group(1)})"))
        elif variable["type"] in ("custom", "constant", "interval", "textbox"):
            values[name] = str(variable.get("query", "")).split(",")[0]
        else:
            raise CheckFailed(f"variable {name}: type {variable['type']} not understood by this check")
    return values, queries


def panel_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every target, rows' nested panels included."""
    found = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("hide"):
                    continue
                if "expr" not in target:
                    raise CheckFailed(f"panel {panel.get('title')!r}: a target without expr")
                found.append((f"{panel.get('title')} [{target.get('refId', '?')}]", target["expr"]))

    walk(dashboard.get("panels", []))
    return found


def alert_names(text: str) -> list[str]:
    """The alerting and recording rules a rules file names."""
    return re.findall(r"^\s*- (?:alert|record): *(\S+)", text, flags=re.M)


# --- The run ----------------------------------------------------------------

class Stack:
    """The processes this check starts, stopped by stop() in any case."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        out = open(self.work / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise CheckFailed(f"{name} exited with status {proc.returncode}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{name} ignored SIGTERM for 10 s; killing it")
                proc.kill()
                proc.wait()

    def show_logs(self, lines: int = 30) -> None:
        for name, _ in self.procs:
            path = self.work / f"{name}.log"
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            print(f"--- last {len(tail)} lines of {name}'s output", file=sys.stderr)
            for line in tail:
                print(f"    {line}", file=sys.stderr)


def run_tool(argv: list[str], env: dict, timeout: float) -> str:
    result = subprocess.run(argv, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(argv[:2])} failed ({result.returncode}):\n"
                          f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def check(args, work: Path, stack: Stack) -> list[str]:
    bin_dir = Path(args.bin_dir).resolve()
    service_bin, gateway_bin, bench_bin = (
        str(bin_dir / name) for name in ("clerk-sync-service", "clerk-sync-gateway", "clerk-sync-bench"))
    for path in (service_bin, gateway_bin, bench_bin):
        if not os.access(path, os.X_OK):
            raise CheckFailed(f"no binary {path} (build the workspace first)")
    prometheus_bin = shutil.which(args.prometheus)
    if not prometheus_bin:
        raise CheckFailed(f"no Prometheus server {args.prometheus!r} (Debian package prometheus)")

    dashboard = json.loads(DASHBOARD.read_text())
    variables, variable_queries = dashboard_variables(dashboard)
    panels = [(title, substitute(expr, variables)) for title, expr in panel_expressions(dashboard)]
    alerts = alert_names(ALERTS.read_text())
    if not panels or not alerts:
        raise CheckFailed(f"found {len(panels)} panel expressions and {len(alerts)} alert rules")

    write_token, read_token = secrets.token_hex(16), secrets.token_hex(16)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    sync_port, sync_metrics, gw_port, gw_metrics, prom_port = (free_port() for _ in range(5))
    sync_url = f"http://127.0.0.1:{sync_port}"
    gateway_url = f"http://127.0.0.1:{gw_port}"
    quiet = {"RUST_LOG": "warn", "LOG_FORMAT": "text", "NO_COLOR": "1"}
    gateway_env = {**quiet, "SYNC_SERVICE_URL": sync_url, "SYNC_SERVICE_TOKEN": write_token,
                   "CLERK_WEBHOOK_SECRET": secret}

    stack.start("sync-service", [service_bin], {
        **quiet, "DATABASE_URL": f"sqlite://{work}/clerk-sync.db?mode=rwc",
        "SYNC_SERVICE_LISTEN_ADDR": f"127.0.0.1:{sync_port}",
        "SYNC_SERVICE_METRICS_LISTEN_ADDR": f"127.0.0.1:{sync_metrics}",
        "SYNC_SERVICE_WRITE_TOKENS": write_token, "SYNC_SERVICE_READ_TOKENS": read_token,
    })
    stack.start("gateway", [gateway_bin], {
        **gateway_env, "GATEWAY_LISTEN_ADDR": f"127.0.0.1:{gw_port}",
        "GATEWAY_METRICS_LISTEN_ADDR": f"127.0.0.1:{gw_metrics}",
    })

    config = work / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "clerk-sync-gateway",
             "static_configs": [{"targets": [f"127.0.0.1:{gw_metrics}"]}]},
            {"job_name": "clerk-sync-service",
             "static_configs": [{"targets": [f"127.0.0.1:{sync_metrics}"]}]},
        ],
    }, indent=2))
    stack.start("prometheus", [
        prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
    ], {})
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")

    def gateway_ready():
        stack.check_alive()
        return http_get(f"{gateway_url}/readyz", timeout=2) is not None
    wait_until("the gateway's /readyz", gateway_ready, timeout=60)
    wait_until("Prometheus's /-/ready", lambda: http_get(f"{prom.base}/-/ready", timeout=2), timeout=30)
    log(f"stack up: sync-service {sync_url} (metrics :{sync_metrics}), gateway {gateway_url} "
        f"(metrics :{gw_metrics}), Prometheus {prom.base}")

    def scraped_after(moment: float):
        """Both targets up, each scraped after `moment` (epoch seconds)."""
        def done():
            stack.check_alive()
            targets = prom.api("targets")["data"]["activeTargets"]
            return len(targets) == 2 and all(
                t["health"] == "up" and time_of(t["lastScrape"]) > moment for t in targets)
        return done

    # Prometheus's first scrapes come a few seconds after it starts; load
    # before them would only ever be seen as a counter's first value, so
    # rate() and increase() would show none of it.
    wait_until("Prometheus's first scrape of both targets", scraped_after(time.time()), timeout=30)
    log("both targets scraped")

    # A scheduled reconcile pass against the fake Clerk, before any webhook:
    # it finds three users the directory lacks (repaired: missed) and records
    # a complete pass with its interval, then sleeps until it is stopped.
    clerk = start_fake_clerk([clerk_user(f"user_promcheck_clerk_{n}", 1_700_000_000_000 + n) for n in range(3)])
    try:
        stack.start("backfill", [gateway_bin, "backfill", "--reconcile", "--every", "1h"], {
            **gateway_env, "GATEWAY_METRICS_LISTEN_ADDR": "",
            "CLERK_SECRET_KEY": CLERK_KEY, "CLERK_API_URL": f"http://127.0.0.1:{clerk.server_address[1]}",
        })

        def reconciled():
            stack.check_alive()
            text = http_get(f"http://127.0.0.1:{sync_metrics}/metrics").decode()
            return "clerk_sync_service_reconcile_last_success_timestamp_seconds " in text
        wait_until("a complete reconcile pass in the sync-service's metrics", reconciled, timeout=30)
    finally:
        clerk.shutdown()
    log("reconcile pass recorded")

    # Deliveries a retry cannot fix (quarantined and acknowledged; the second
    # one is refused by the sync-service, an upstream INVALID_ARGUMENT), an
    # event type the directory does not sync, and deliveries the verifier
    # refuses: before and after the ingest, so rates see them move.
    def odd_deliveries(round_: int) -> str:
        hook = f"{gateway_url}/clerk"
        now_ms = int(time.time() * 1000)
        cases = [
            ("signed, not JSON", b'{"type": "user.created", "data": {', None),
            ("signed, user id too long", json.dumps({
                "type": "user.created", "object": "event", "timestamp": now_ms,
                "data": clerk_user(f"user_{round_}" + "x" * 300, now_ms)}).encode(), None),
            ("signed, session.created", json.dumps({
                "type": "session.created", "object": "event", "data": {"id": "sess_1"}}).encode(), None),
            ("forged signature", b"{}", "v1," + base64.b64encode(b"\0" * 32).decode()),
            ("no signature headers", b"{}", ""),
        ]
        answers = []
        for n, (what, body, signature) in enumerate(cases):
            headers = signed_headers(secret, f"msg_promcheck_{round_}_{n}", body)
            if signature:
                headers["svix-signature"] = signature
            elif signature == "":
                headers = {}
            answers.append(f"{what} → {post(hook, body, headers)}")
        return ", ".join(answers)

    log(f"odd deliveries: {odd_deliveries(1)}")

    # The load. Signed deliveries through the gateway, verified at the end.
    bench_env = {"CLERK_WEBHOOK_SECRET": secret, "SYNC_SERVICE_TOKEN": read_token, "RUST_LOG": "warn"}
    out = run_tool([bench_bin, "ingest", "--gateway-url", f"{gateway_url}/clerk", "--users", "200",
                    "--updates", "2", "--delete-rate", "0.1", "--duplicate-rate", "0.05",
                    "--connections", "8", "--sync-service-url", sync_url], bench_env, timeout=60)
    log("ingest: " + " ".join(line.removeprefix("RESULT ") for line in out.splitlines()
                              if line.startswith(("RESULT ingest", "RESULT verify"))))
    log(f"odd deliveries again: {odd_deliveries(2)}")

    # Directory reads: organizations for the membership calls, then every
    # query method twice, a scrape apart (the cache sees misses, then hits,
    # and each counter moves after Prometheus first saw it).
    run_tool([bench_bin, "seed-organizations", "--sync-service-url", sync_url,
              "--organizations", "3", "--sample", "60"], {**bench_env, "SYNC_SERVICE_TOKEN": write_token}, timeout=30)
    for round_ in (1, 2):
        for method in ("get-user", "batch-get-users", "find-user-by-email", "list-users",
                       "check-permission", "get-membership", "health"):
            run_tool([bench_bin, "query", "--sync-service-url", sync_url, "--method", method,
                      "--calls", "200", "--connections", "4", "--sample", "60"], bench_env, timeout=30)
        if round_ == 1:
            wait_until("a scrape after the first queries", scraped_after(time.time()), timeout=10)
    log("queries: every method, twice 200 calls each")
    load_done = time.time()

    # Scrapes after the load, so rate() sees all of it, and the gauges the
    # sync-service samples every health-check interval (1 s) are current.
    wait_until("scrapes of both targets after the load", scraped_after(load_done + 1.5), timeout=20)

    failures = []

    log("\nTargets:")
    for target in prom.api("targets")["data"]["activeTargets"]:
        ok = target["health"] == "up"
        log(f"  {'ok  ' if ok else 'FAIL'} {target['labels']['job']} {target['scrapeUrl']}: {target['health']}"
            + (f" ({target['lastError']})" if target.get("lastError") else ""))
        if not ok:
            failures.append(f"target {target['scrapeUrl']} is {target['health']}")

    # Prometheus refuses to start on a rules file it cannot load; what it
    # loaded must be every rule the file names, each evaluating cleanly, and
    # each expression (as Prometheus read it) must parse on its own too.
    log("\nRules loaded from ops/alerts.yml (health after evaluation; expression parses; "
        "metric names exposed):")
    exposed = set(prom.api("label/__name__/values")["data"])
    groups = prom.api("rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for name in alerts:
        if name not in loaded:
            failures.append(f"alert {name} is not among the loaded rules")
    for name, rule in loaded.items():
        answer = prom.query(rule["query"])
        problems = []
        if rule.get("health") != "ok" or rule.get("lastError"):
            problems.append(f"health {rule.get('health')} {rule.get('lastError', '')}".strip())
        if answer.get("status") != "success":
            problems.append(f"does not parse: {answer.get('error')}")
        # A misspelt name parses and never fires: every name must be exposed.
        unknown = sorted(set(re.findall(r"\bclerk_sync_\w+", rule["query"])) - exposed)
        if unknown:
            problems.append(f"names metrics the binaries do not expose: {', '.join(unknown)}")
        summary = "; ".join(problems) or (
            f"health ok, state {rule.get('state', '-')}, {len(answer['data']['result'])} series now")
        log(f"  {'FAIL' if problems else 'ok  '} {name}: {summary}")
        failures += [f"rule {name}: {problem}" for problem in problems]

    log(f"\nDashboard {DASHBOARD.relative_to(ROOT)} ({len(panels)} panel expressions, "
        f"{len(variable_queries)} variables; {', '.join(f'${k}={v}' for k, v in variables.items())}):")
    for title, expr in variable_queries + panels:
        unknown = sorted({name for name in re.findall(r"\bclerk_sync_\w+", expr) if name not in exposed})
        answer = prom.query(expr)
        if answer.get("status") != "success":
            verdict, problem = "FAIL", f"does not parse: {answer.get('error')}"
        elif unknown:
            verdict, problem = "FAIL", f"names metrics the binaries do not expose: {', '.join(unknown)}"
        elif not answer["data"]["result"] and expr not in NO_DATA_EXPECTED:
            verdict, problem = "FAIL", "returned no data"
        else:
            verdict, problem = "ok  ", None
        result = answer.get("data", {}).get("result", [])
        summary = problem or (f"{len(result)} series, e.g. {describe(result[0])}" if result
                              else f"no data, as expected: {NO_DATA_EXPECTED.get(expr)}")
        log(f"  {verdict} {title}: {summary}")
        if problem:
            log(f"         {expr}")
            failures.append(f"{title}: {problem}")
    return failures


def time_of(rfc3339: str) -> float:
    """Seconds since the epoch of a lastScrape (RFC 3339, nanoseconds)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def describe(sample: dict) -> str:
    labels = ",".join(f'{k}="{v}"' for k, v in sample.get("metric", {}).items())
    value = sample.get("value", [None, "?"])[1]
    return f"{{{labels}}} {value}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True,
                        help="where clerk-sync-service, clerk-sync-gateway and clerk-sync-bench are")
    parser.add_argument("--prometheus", default="prometheus", help="the Prometheus server binary")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, TSDB)")
    args = parser.parse_args()

    # SIGTERM (CI's timeout) unwinds like Ctrl-C, and so does running out of
    # time, so the finally below always stops what was started.
    def interrupted(signum, _frame):
        if signum == signal.SIGALRM:
            raise CheckFailed(f"the check took longer than {DEADLINE_SECS} s")
        raise KeyboardInterrupt(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGALRM, interrupted)
    signal.alarm(DEADLINE_SECS)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="clerk-sync-prometheus-"))
    stack = Stack(work)
    failures = []
    try:
        failures = check(args, work, stack)
    except (CheckFailed, subprocess.TimeoutExpired, KeyboardInterrupt) as error:
        failures = [str(error) or type(error).__name__]
        stack.show_logs()
    finally:
        signal.alarm(0)
        stack.stop()
        if args.keep:
            log(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - started
    if failures:
        print(f"\nPrometheus check FAILED ({len(failures)} problems, {elapsed:.0f} s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    log(f"\nPrometheus check passed in {elapsed:.0f} s: every dashboard expression returns data, "
        "every alert expression parses, both targets up, rules healthy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
