"""A local HTTP endpoint speaking just enough of Dataflow's and Cloud Scheduler's REST APIs.

Neither service has an emulator. The providers' official clients, given REST transport,
anonymous credentials and this endpoint (`FakeGoogle.client_kwargs`), send here exactly what
they would send to Google, so the tests see the real requests: paths, bodies, update masks.
The answers are the minimum the providers need, not a model of the services.

* Dataflow (``/v1b3/...``): launch (409 while a job of that name is active, ``update`` replaces
  the running job), list active jobs, get, update (a requested state takes effect at once).
  A launch with Streaming Engine makes a streaming job, any other a batch run.
* Cloud Scheduler (``/v1/projects/*/locations/*/jobs...``): create (409 if present), list
  (paged when ``scheduler_page_size`` is set), patch honouring ``updateMask``, delete (404 if
  absent). `tick` does what Cloud Scheduler does at a tick of an HTTP-target job: it sends
  the job's request, body and all, to the target (here: this fake's Dataflow launch).
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import dataflow_v1beta3 as dataflow
from google.cloud import scheduler_v1 as scheduler

State = dataflow.JobState
STREAMING, BATCH = int(dataflow.JobType.JOB_TYPE_STREAMING), int(dataflow.JobType.JOB_TYPE_BATCH)
TERMINAL = {int(State.JOB_STATE_DONE), int(State.JOB_STATE_CANCELLED), int(State.JOB_STATE_DRAINED),
            int(State.JOB_STATE_UPDATED), int(State.JOB_STATE_FAILED)}
LAUNCH_SUFFIX = "flexTemplates:launch"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


class FakeGoogle:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.jobs: dict[str, dict] = {}  # Dataflow jobs by id
        self.launch_status = 200  # answer launches with this status instead (e.g. 409)
        # What happens to the replacement job an update launches: it runs ("ok"), Dataflow's
        # compatibility check rejects it ("incompatible"), or it fails otherwise ("broken").
        # Either failure leaves the running job untouched, as Dataflow does.
        self.update_outcome = "ok"
        self.messages: dict[str, list[dict]] = {}  # error messages by job id
        self.scheduler_jobs: dict[str, dict] = {}  # Cloud Scheduler jobs by full name
        self.scheduler_page_size: int | None = None
        self.scheduler_disabled = False  # answer Cloud Scheduler as a project without the API enabled
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                request = Request(self.command, url.path, query, body)
                with outer._lock:
                    outer.requests.append(request)
                    status, reply = outer.answer(request)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def client_kwargs(self) -> dict[str, Any]:
        """What the providers pass to the official clients to reach this endpoint."""
        return {"transport": "rest", "credentials": AnonymousCredentials(),
                "client_options": ClientOptions(api_endpoint=self.endpoint)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests do to the fake services --

    def tick(self, job_name: str) -> tuple[int, dict]:
        """Cloud Scheduler's tick: send the job's HTTP request to its target (this fake)."""
        target = self.scheduler_jobs[job_name]["httpTarget"]
        assert target["uri"].startswith("https://dataflow.googleapis.com/v1b3/"), target["uri"]
        path = target["uri"].removeprefix("https://dataflow.googleapis.com")
        assert target.get("httpMethod") in ("POST", int(scheduler.HttpMethod.POST)), target.get("httpMethod")
        assert target["headers"]["Content-Type"] == "application/json"
        body = json.loads(base64.b64decode(target["body"]))
        with self._lock:
            return self.answer(Request("POST", path, {}, body))

    def finish_runs(self) -> None:
        """Every active batch run ends successfully."""
        with self._lock:
            for job in self.jobs.values():
                if job["type"] == BATCH and job["currentState"] not in TERMINAL:
                    job["currentState"] = int(State.JOB_STATE_DONE)

    def active(self) -> list[dict]:
        return [job for job in self.jobs.values() if job["currentState"] not in TERMINAL]

    # -- routes --

    def answer(self, request: Request) -> tuple[int, dict]:
        if request.path.startswith("/v1b3/"):
            return self._dataflow(request)
        if request.path.startswith("/v1/projects/") and "/jobs" in request.path:
            return self._scheduler(request)
        return _error(404, "no such route")

    def _dataflow(self, request: Request) -> tuple[int, dict]:
        method, path, body = request.method, request.path, request.body
        if method == "GET" and path.endswith("/jobs"):  # list, filter=ACTIVE
            return 200, {"jobs": self.active()}
        if method == "GET" and path.endswith("/messages"):
            return 200, {"jobMessages": self.messages.get(path.split("/")[-2], [])}
        if method == "GET":
            return 200, self.jobs[path.rsplit("/", 1)[1]]
        if method == "POST" and path.endswith(LAUNCH_SUFFIX):
            if self.launch_status != 200:
                return _error(self.launch_status, "refused")
            launch = body["launchParameter"]
            if not launch.get("update") and any(j["name"] == launch["jobName"] for j in self.active()):
                return _error(409, f"a job named {launch['jobName']} is already active")
            job_id = f"job-{len(self.jobs) + 1}"
            state = State.JOB_STATE_RUNNING
            if launch.get("update") and self.update_outcome != "ok":
                state = State.JOB_STATE_FAILED
                self.messages[job_id] = [{"messageImportance": "JOB_MESSAGE_ERROR", "messageText": (
                    "Workflow failed. Causes: The new job is not compatible with 2026-11-26_01_00_00-1. "
                    "The original job has not been aborted." if self.update_outcome == "incompatible" else
                    "Error occurred in the launcher container: Template launch failed. See console logs.")}]
            for old in self.active():  # an update replaces the running job of that name
                if launch.get("update") and old["name"] == launch["jobName"] and state == State.JOB_STATE_RUNNING:
                    old.update(currentState=int(State.JOB_STATE_UPDATED), replacedByJobId=job_id)
            environment = launch.get("environment", {})
            self.jobs[job_id] = {"id": job_id, "name": launch["jobName"],
                                 "type": STREAMING if environment.get("enableStreamingEngine") else BATCH,
                                 "currentState": int(state),
                                 "labels": environment.get("additionalUserLabels", {}),
                                 "launch": body}
            return 200, {"job": self.jobs[job_id]}
        if method == "PUT":
            job = self.jobs[path.rsplit("/", 1)[1]]
            job["currentState"] = body["requestedState"]  # drains or cancels at once
            return 200, job
        return _error(404, "no such route")

    def _scheduler(self, request: Request) -> tuple[int, dict]:
        if self.scheduler_disabled:  # the shape Google answers with (ErrorInfo reason SERVICE_DISABLED)
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": (
                "Cloud Scheduler API has not been used in project headwater-demo before or it is disabled."),
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                             "domain": "googleapis.com",
                             "metadata": {"service": "cloudscheduler.googleapis.com"}}]}}
        method, path, body = request.method, request.path.removeprefix("/v1/"), request.body
        if method == "GET" and path.endswith("/jobs"):
            jobs = sorted((j for name, j in self.scheduler_jobs.items() if name.startswith(path + "/")),
                          key=lambda j: j["name"])
            start = int(request.query.get("pageToken") or 0)
            size = self.scheduler_page_size or len(jobs) or 1
            page = {"jobs": jobs[start:start + size]}
            if start + size < len(jobs):
                page["nextPageToken"] = str(start + size)
            return 200, page
        if method == "POST" and path.endswith("/jobs"):
            if body["name"] in self.scheduler_jobs:
                return _error(409, f"job {body['name']} already exists")
            self.scheduler_jobs[body["name"]] = {**body, "state": "ENABLED"}
            return 200, self.scheduler_jobs[body["name"]]
        if path not in self.scheduler_jobs:
            return _error(404, f"job {path} not found")
        if method == "PATCH":
            job = self.scheduler_jobs[path]
            for field in request.query["updateMask"].split(","):
                if field in body:
                    job[field] = body[field]
                else:
                    job.pop(field, None)
            return 200, job
        if method == "DELETE":
            del self.scheduler_jobs[path]
            return 200, {}
        return _error(404, "no such route")


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message}}
