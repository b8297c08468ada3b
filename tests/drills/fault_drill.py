"""Fault drill: the platform under SIGKILLs and a database restart.

Starts a private PostgreSQL cluster, an mpl-server (api + in-process scheduler) and a second,
standalone mpl-scheduler, all on this machine. Uploads Fashion-MNIST, submits several smoke runs,
then, for a bounded number of rounds, does one harmful thing at a random moment: SIGKILL a
trainer, SIGKILL the standalone scheduler, SIGKILL the api server, or restart PostgreSQL; each
killed process is started again. Afterwards it waits for every run to end and checks:

  * every run succeeded: each fault costs a run at most one attempt and the runs have twelve,
    so a failure means the platform could not recover (a run that fails must say why);
  * no metric point is stored twice, and every run that succeeded has its full series;
  * every recorded checkpoint has its bytes in storage with the recorded sha256.

Used by scripts/fault-drill.sh, which sets up the binaries and the database cluster.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION = "/usr/share/datasets/fashion-mnist"


def log(msg):
    print(f"[drill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def request(self, method, path, body=None, raw=None, timeout=30):
        data, headers = None, {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
            return json.loads(text) if text else None

    def retrying(self, method, path, body=None, raw=None, attempts=60):
        """Calls the api, waiting out a restart of the server or of the database."""
        for i in range(attempts):
            try:
                return self.request(method, path, body, raw)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                    raise
                time.sleep(1)
        raise RuntimeError(f"{method} {path} kept failing")


class Drill:
    def __init__(self, cfg):
        self.cfg = cfg
        self.env = dict(os.environ)
        self.env.update({
            "MPL_DATABASE_URL": cfg["database_url"],
            "MPL_DATA_DIR": cfg["data_dir"],
            "MPL_STORAGE_URL": "file://" + os.path.join(cfg["data_dir"], "objects"),
            "MPL_ADMIN_TOKEN": cfg["token"],
            "MPL_TRAINER_BIN": cfg["trainer"],
            "MPL_LEASE_TTL_SECS": "6",
            "MPL_HEARTBEAT_SECS": "2",
            "MPL_CANCEL_GRACE_SECS": "10",
            "RUST_LOG": "warn",
        })
        self.server = self.scheduler = None
        self.api = Api(f"http://127.0.0.1:{cfg['port']}", cfg["token"])

    def start_server(self):
        env = dict(self.env, MPL_LISTEN=f"127.0.0.1:{self.cfg['port']}",
                   MPL_DATA_DIR=os.path.join(self.cfg["data_dir"], "server"))
        out = open(os.path.join(self.cfg["data_dir"], "server.log"), "ab")
        self.server = subprocess.Popen([self.cfg["server"], "serve"], env=env, stdout=out,
                                       stderr=out)

    def start_scheduler(self):
        env = dict(self.env, MPL_DATA_DIR=os.path.join(self.cfg["data_dir"], "scheduler"))
        out = open(os.path.join(self.cfg["data_dir"], "scheduler.log"), "ab")
        self.scheduler = subprocess.Popen([self.cfg["scheduler"]], env=env, stdout=out,
                                          stderr=out)

    def wait_ready(self):
        for _ in range(120):
            try:
                urllib.request.urlopen(self.api.base + "/readyz", timeout=2)
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("the api did not become ready")

    def upload_dataset(self):
        ds = self.api.retrying("POST", "/v1/datasets",
                               {"name": "fashion-test", "kind": "labeled", "format": "idx"})
        for part, name in [("images", "t10k-images-idx3-ubyte.gz"),
                           ("labels", "t10k-labels-idx1-ubyte.gz")]:
            with open(os.path.join(FASHION, name), "rb") as f:
                self.api.retrying("PUT", f"/v1/datasets/{ds['id']}/parts/{part}", raw=f.read())
        for _ in range(240):
            ds = self.api.retrying("GET", f"/v1/datasets/{ds['id']}")
            if ds["status"] == "ready":
                return ds["id"]
            if ds["status"] == "failed":
                raise RuntimeError(f"ingestion failed: {ds.get('failure_reason')}")
            time.sleep(0.5)
        raise RuntimeError("ingestion did not finish")

    def submit_runs(self, dataset_id, count):
        with open(os.path.join(ROOT, "examples", "smoke.json")) as f:
            spec = json.load(f)
        source = {"dataset_id": dataset_id}
        spec["data"]["labeled"] = source
        spec["data"]["eval"] = source
        spec["data"]["num_labeled"] = 500
        spec["data"]["num_validation"] = 200
        # Short attempts with frequent checkpoints: the drill is about surviving faults, and
        # evaluating 10 000 test images often would only slow it down.
        spec["total_steps"] = 30
        spec["checkpoint"]["interval_steps"] = 5
        spec["eval"]["interval_steps"] = 30
        spec["finetune"]["steps"] = 3
        ids = []
        for i in range(count):
            spec["seed"] = i
            run = self.api.retrying("POST", "/v1/runs",
                                    {"spec": spec, "name": f"drill-{i}", "max_attempts": 12})
            ids.append(run["id"])
        return ids

    def trainer_pids(self):
        """The drill's own trainers: their work directories lie under its data directory, so
        trainers of anything else on the machine are left alone."""
        out = subprocess.run(["pgrep", "-f", "trainer run --spec"], capture_output=True,
                             text=True).stdout
        pids = []
        for pid in out.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.cfg["data_dir"] in cmdline:
                pids.append(int(pid))
        return pids

    def harm(self, rng):
        action = rng.choice(["trainer", "trainer", "scheduler", "server", "postgres"])
        if action == "trainer":
            pids = self.trainer_pids()
            if not pids:
                return "no trainer running"
            os.kill(rng.choice(pids), signal.SIGKILL)
            return "SIGKILL a trainer"
        if action == "scheduler":
            self.scheduler.kill()
            self.scheduler.wait()
            self.start_scheduler()
            return "SIGKILL mpl-scheduler, restarted"
        if action == "server":
            self.server.kill()
            self.server.wait()
            self.start_server()
            self.wait_ready()
            return "SIGKILL mpl-server, restarted"
        subprocess.run(self.cfg["pg_restart"], shell=True, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return "restarted PostgreSQL"

    def wait_all_done(self, ids, timeout_secs):
        deadline = time.time() + timeout_secs
        while time.time() < deadline:
            runs = [self.api.retrying("GET", f"/v1/runs/{i}") for i in ids]
            if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs):
                return runs
            time.sleep(2)
        raise RuntimeError("runs did not finish in time: " +
                           ", ".join(f"{r['name']}={r['status']}" for r in runs))

    def psql(self, sql):
        out = subprocess.run(["psql", self.cfg["database_url"], "-tAc", sql], check=True,
                             capture_output=True, text=True).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def check(self, runs):
        failures = []
        for r in runs:
            if r["status"] == "failed" and not r.get("failure_reason"):
                failures.append(f"run {r['name']} failed without a reason")
            if r["status"] != "succeeded":
                failures.append(f"run {r['name']} ended {r['status']}: {r.get('failure_reason')}")
        dupes = self.psql("SELECT count(*) FROM (SELECT 1 FROM metrics GROUP BY run_id, name, step"
                          " HAVING count(*) > 1) d")
        if dupes[0][0] != "0":
            failures.append(f"{dupes[0][0]} metric points stored more than once")
        total = int(runs[0]["spec"]["total_steps"]) if runs else 0
        for r in runs:
            if r["status"] != "succeeded":
                continue
            steps = self.psql(f"SELECT count(DISTINCT step) FROM metrics WHERE run_id = '{r['id']}'"
                              " AND name = 'teacher/loss'")
            if int(steps[0][0]) < total:
                failures.append(f"run {r['name']}: teacher/loss has {steps[0][0]} of {total} steps")
        objects = os.path.join(self.cfg["data_dir"], "objects")
        rows = self.psql("SELECT storage_prefix, files FROM checkpoints WHERE deleted_at IS NULL")
        for prefix, files in rows:
            for f in json.loads(files):
                path = os.path.join(objects, prefix, f["name"])
                if not os.path.exists(path):
                    failures.append(f"checkpoint file missing: {prefix}/{f['name']}")
                    continue
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                if digest != f["sha256"]:
                    failures.append(f"checkpoint file corrupt: {prefix}/{f['name']}")
        log(f"checked {len(runs)} runs and {len(rows)} checkpoints")
        return failures

    def stop(self):
        for p in (self.server, self.scheduler):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def main():
    cfg = json.loads(sys.argv[1])
    rng = random.Random(cfg.get("seed", 7))
    drill = Drill(cfg)
    try:
        drill.start_server()
        drill.wait_ready()
        drill.start_scheduler()
        dataset_id = drill.upload_dataset()
        log("dataset ready")
        ids = drill.submit_runs(dataset_id, cfg.get("runs", 4))
        log(f"submitted {len(ids)} runs")
        for round_no in range(cfg.get("rounds", 6)):
            time.sleep(rng.uniform(4, 12))
            log(f"round {round_no + 1}: {drill.harm(rng)}")
        runs = drill.wait_all_done(ids, cfg.get("timeout_secs", 900))
        failures = drill.check(runs)
    finally:
        drill.stop()
    succeeded = sum(r["status"] == "succeeded" for r in runs)
    log(f"{succeeded} of {len(runs)} runs succeeded")
    for f in failures:
        log("FAIL: " + f)
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
