"""The dashboard in a real browser: Debian's chromium driven by Playwright,
against a real `gust up` with real guests and real invocations.

Run by `.ci/browser-check` (which installs what it needs); by hand:

    python3 crates/ui/tests/browser.py --gust target/debug/gust \
        --guests examples/target/wasm32-wasip2/release [--screenshots docs/ui]

Each check prints one line; the first that fails stops the run (exit 1).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def check(ok, what, detail=""):
    """One check: its line, and on failure `detail` (what the page held)."""
    if not ok:
        print(f"FAIL: {what}\n{detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


class Gust:
    """A `gust up` on free ports, and its CLI."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.out = open(os.path.join(workdir, "stdout"), "w+")
        self.proc = subprocess.Popen(
            [binary, "up", "--data-dir", os.path.join(workdir, "data"),
             "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
            stdout=self.out, stderr=subprocess.STDOUT)
        self.api = self.url = self.token = None
        deadline = time.time() + 60
        while time.time() < deadline and not (self.api and self.url and self.token):
            self.out.seek(0)
            for line in self.out.read().splitlines():
                if line.startswith("gust: control API on "):
                    self.api = line.split(" on ", 1)[1].strip()
                elif line.startswith("gust: functions on "):
                    self.url = line.split(" on ", 1)[1].strip()
                elif line.startswith("gust: admin token (shown once, keep it): "):
                    self.token = line.rsplit(" ", 1)[1].strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not (self.api and self.url and self.token):
            self.out.seek(0)
            sys.exit("gust up did not start:\n" + self.out.read())

    def cli(self, token, *args):
        env = dict(os.environ, GUST_API=self.api, GUST_TOKEN=token)
        env.pop("GUST_TENANT", None)
        done = subprocess.run([self.binary, *args, "--json"], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"gust {' '.join(args)} failed: {done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def request(self, token, method, path, headers=None, body=None, base=None):
        req = urllib.request.Request((base or self.url) + path, method=method, data=body,
                                     headers={"authorization": f"Bearer {token}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def submit(page, selector):
    """Clicks what submits a form and waits for the page it leads to."""
    with page.expect_navigation():
        page.click(selector)


def eventually(what, fn, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    check(False, what)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gust", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots")
    args = parser.parse_args()
    hello = os.path.join(args.guests, "hello.wasm")
    testbed = os.path.join(args.guests, "testbed.wasm")

    with tempfile.TemporaryDirectory() as work:
        gust = Gust(args.gust, work)
        try:
            run(gust, args, hello, testbed, work)
        finally:
            gust.stop()


def run(gust, args, hello, testbed, work):
    admin = gust.token
    for tenant in ("acme", "rival"):
        gust.cli(admin, "tenant", "create", tenant)
    owner = gust.cli(admin, "token", "create", "--tenant", "acme", "--role", "owner")["token"]
    viewer = gust.cli(admin, "token", "create", "--tenant", "acme", "--role", "viewer")["token"]
    rival = gust.cli(admin, "token", "create", "--tenant", "rival", "--role", "owner")["token"]

    # acme: `web` with two versions (rollback has somewhere to go), `jobs`
    # whose events fail into the dead-letter queue, a schedule, a secret.
    gust.cli(owner, "deploy", "web", hello)
    gust.cli(owner, "deploy", "web", testbed)
    gust.cli(owner, "deploy", "jobs", testbed, "--max-attempts", "1")
    gust.cli(owner, "config", "set", "web", "GREETING=hi")
    secret_file = os.path.join(work, "secret")
    with open(secret_file, "w") as f:
        f.write("s3cr3t-value")
    gust.cli(owner, "secret", "set", "web", "API_KEY", "--value-file", secret_file)
    gust.cli(owner, "schedule", "add", "jobs", "0 0 * * * *", "--id", "hourly")
    # rival: a function acme must never see.
    gust.cli(rival, "deploy", "rival-only", hello)
    for i in range(12):
        gust.request(owner, "GET", f"/@acme/web/lines?n=2&tag=ui-line-{i}")
    for _ in range(3):
        gust.request(owner, "GET", "/@acme/web/status?code=500")
    status, body = gust.request(owner, "POST", "/@acme/jobs/trap",
                                headers={"gust-invocation-type": "Event"}, body=b"")
    check(status == 202, f"an event was accepted ({status} {body.strip()})")
    dead_id = json.loads(body)["invocation_id"]
    eventually("the trapping event is dead-lettered", lambda: any(
        l["invocation_id"] == dead_id for l in gust.cli(owner, "dlq", "jobs")))
    # The meter indexes usage every 500 ms: wait until the charts' source has it.
    eventually("the requests are metered", lambda: sum(
        i["requests"] for i in json.loads(gust.request(
            owner, "GET", "/v1/functions/web/stats", base=gust.api)[1])["intervals"]) >= 15)

    ui = gust.api + "/ui"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        shots = args.screenshots
        if shots:
            os.makedirs(shots, exist_ok=True)

        def session(token):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: d.accept())
            page.goto(ui + "/")
            check(page.url.endswith("/ui/signin"), "an unsigned browser lands on the sign-in page")
            page.fill("#token", token)
            submit(page, "button[type=submit]")
            return context, page, errors

        # A wrong token is refused with the API's reason.
        context = browser.new_context()
        page = context.new_page()
        page.goto(ui + "/signin")
        page.fill("#token", "gust_not-a-token")
        submit(page, "button[type=submit]")
        refusal = page.locator(".error").inner_text() if page.locator(".error").count() else ""
        check("/ui/signin" in page.url and "token" in refusal and "refused" not in refusal,
              f"a wrong token is refused on the sign-in page with the API's reason ({refusal})")
        context.close()

        context, page, errors = session(owner)
        check(page.url.endswith("/ui/functions"), "signing in opens the functions page",
              f"{page.url}: {page.content()[:3000]}")
        cookies = {c["name"]: c for c in context.cookies()}
        cookie = cookies.get("gust_session")
        check(cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict",
              "the session cookie is HttpOnly and SameSite=Strict")
        check(owner not in json.dumps(context.cookies()), "the token itself is not in a cookie")
        answer = page.goto(ui + "/functions")
        csp = answer.headers.get("content-security-policy", "")
        check("script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp,
              "pages carry a strict Content-Security-Policy")
        names = page.locator("#functions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.function)")
        check(sorted(names) == ["jobs", "web"], f"the functions page lists the tenant's functions ({names})")
        check(page.locator("#tenant").inner_text() == "acme", "the page names the tenant")
        check("rival-only" not in page.content(), "another tenant's function is not shown")
        if shots:
            page.screenshot(path=os.path.join(shots, "functions.png"), full_page=True)

        page.click("#functions a[href='/ui/functions/web']")

        page.wait_for_url("**/ui/functions/web")
        check(page.locator("#live-version").inner_text() == "v2", "the function page shows the live version")
        check(page.locator("figure.chart svg").count() == 4, "four charts are drawn")
        totals = page.locator("#activity-totals").inner_text()
        requests = int(re.match(r"(\d+) requests, (\d+) errors", totals).group(1))
        errs = int(re.match(r"(\d+) requests, (\d+) errors", totals).group(2))
        check(requests >= 15 and errs >= 3, f"the charts count the requests and errors ({totals})")
        check(page.locator("#versions tbody tr").count() == 2, "both versions are listed")
        vars_text = page.locator("#vars").inner_text()
        check("API_KEY" in vars_text and "GREETING" in vars_text and "s3cr3t-value" not in page.content(),
              "variables are shown, secrets by name only")
        if shots:
            page.screenshot(path=os.path.join(shots, "function.png"), full_page=True)

        # Rollback through the page: `live` goes back to v1, and the data plane serves it.
        submit(page, "#aliases tr[data-alias=live] button")
        check(page.locator(".note").inner_text() == "Rolled back.", "the rollback is confirmed")
        check(page.locator("#live-version").inner_text() == "v1", "live is back on v1")
        status, body = gust.request(owner, "GET", "/@acme/web/")
        check(status == 200 and body.startswith("Hello"), f"the data plane serves v1 ({status} {body.strip()[:30]})")

        # Redrive through the page, once the function is fixed.
        gust.cli(owner, "deploy", "jobs", hello)
        page.goto(ui + "/functions/jobs")
        check(page.locator(f"#dead-letters tr[data-invocation='{dead_id}']").count() == 1,
              "the dead letter is listed")
        submit(page, f"#dead-letters tr[data-invocation='{dead_id}'] button")
        check(page.locator(".note").inner_text() == "Dead letters redriven.", "the redrive is confirmed")
        eventually("the redriven event succeeds", lambda: gust.cli(owner, "invocation", dead_id)["state"] == "succeeded")

        # Logs: search, then live follow.
        page.goto(ui + "/functions/web/logs?grep=ui-line-3")
        rows = page.locator("#log-rows tr").count()
        check(rows == 1 and "ui-line-3" in page.locator("#log-rows").inner_text(),
              f"a log search finds the one matching invocation ({rows} rows)")
        page.goto(ui + "/functions/web/logs?grep=followed")
        check(page.locator("#log-rows tr").count() == 0, "nothing matches before")
        page.check("#follow")
        gust.request(owner, "GET", "/@acme/web/lines?n=1&tag=followed")  # v1 (hello) prints nothing…
        gust.cli(owner, "alias", "set", "web", "live", "2")
        gust.request(owner, "GET", "/@acme/web/lines?n=1&tag=followed")
        page.wait_for_selector("#log-rows tr", timeout=15000)
        check("followed" in page.locator("#log-rows").inner_text(), "live follow shows a new line")
        if shots:
            page.goto(ui + "/functions/web/logs?since=1h")
            page.screenshot(path=os.path.join(shots, "logs.png"), full_page=True)

        page.goto(ui + "/usage")
        check(int(page.locator("#usage-total strong").first.inner_text()) >= 15,
              "the usage page counts the month's invocations")
        if shots:
            page.screenshot(path=os.path.join(shots, "usage.png"), full_page=True)
        page.goto(ui + "/triggers")
        check("0 0 * * * *" in page.content(), "the schedule is listed")
        page.goto(ui + "/tokens")
        check(page.locator("#tokens tbody tr").count() >= 2, "an owner sees the tenant's tokens")
        check("/rollback" in page.locator("#audit").inner_text(), "the rollback is in the audit log")
        check(not errors, f"no errors in the console ({errors})")

        # Changes from elsewhere are refused: another site, or no session value.
        api = context.request
        forged = api.post(ui + "/functions/web/rollback", form={"alias": "live", "csrf": "guess"})
        check(forged.status == 403, f"a change without the session's value is refused ({forged.status})")
        token_value = page.locator("input[name=csrf]").first.get_attribute("value")
        cross = api.post(ui + "/functions/web/rollback", form={"alias": "live", "csrf": token_value},
                         headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
        check(cross.status == 403, f"a change from another site is refused ({cross.status})")

        # Sign-out ends the session: its cookie no longer opens a page.
        page.goto(ui + "/functions")
        submit(page, "#signout")
        check(page.url.endswith("/ui/signin"), "signing out returns to the sign-in page")
        context.add_cookies([{"name": "gust_session", "value": cookie["value"], "url": gust.api + "/ui"}])
        page.goto(ui + "/functions")
        check(page.url.endswith("/ui/signin"), "the old session's cookie no longer signs in")
        context.close()

        # A viewer: reads, but the API refuses its changes and the tokens page.
        context, page, _ = session(viewer)
        page.goto(ui + "/functions/web")
        submit(page, "#aliases tr[data-alias=live] button")
        check(page.locator(".error").count() == 1, "a viewer's rollback is refused with the API's reason")
        answer = page.goto(ui + "/tokens")
        check(answer.status == 403, f"a viewer may not see tokens ({answer.status})")
        context.close()

        # Another tenant's session sees nothing of acme's.
        context, page, _ = session(rival)
        names = page.locator("#functions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.function)")
        check(names == ["rival-only"], f"another tenant sees only its own functions ({names})")
        for path in ("/functions/web", "/functions/web/logs", "/functions/jobs"):
            answer = page.goto(ui + path)
            check(answer.status == 404 and "ui-line" not in page.content() and "s3cr3t" not in page.content(),
                  f"{path} of another tenant is not found")
        page.goto(ui + "/usage")
        check("web" not in page.locator("#usage").inner_text(), "another tenant's usage is not shown")
        answer = page.goto(ui + "/admin")
        check(answer.status == 403, "a tenant owner is not an admin")
        context.close()

        # The admin: tenants and the node, and a look at another tenant.
        context, page, _ = session(admin)
        page.goto(ui + "/admin")
        tenants = page.locator("#tenants tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tenant)")
        check({"acme", "rival", "default"} <= set(tenants), f"the admin sees every tenant ({tenants})")
        check(page.locator("#nodes tbody tr").count() == 1, "the admin sees the node")
        if shots:
            page.screenshot(path=os.path.join(shots, "admin.png"), full_page=True)
        submit(page, "#tenants tr[data-tenant=rival] button")
        check(page.locator("#tenant").inner_text() == "rival", "the admin looks at another tenant")
        check(page.locator("#functions tbody tr").count() == 1, "…and sees its functions")
        context.close()
        browser.close()
    print("all dashboard checks passed", flush=True)


if __name__ == "__main__":
    main()
