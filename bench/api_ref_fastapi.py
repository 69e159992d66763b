"""Reference heartbeat endpoint in FastAPI, for `make bench-api` (bench/api_bench.sh).

The same contract as dumontd's POST /api/v1/agent/status, doing comparable work per request:

1. `Authorization: Bearer dat_...` -> SHA-256 hex of the token -> one SELECT on agent_tokens by
   primary key (401 unless it exists, is of kind "agent" and is not revoked);
2. 403 when the body's instance_id is not the token's instance;
3. one SELECT of the whole instances row by primary key (403 when the token's attempt is not the
   instance's current attempt, i.e. a replaced machine);
4. the body is validated (pydantic, unknown fields refused with 422 - dumontd refuses them with 400);
   GPU utilisations are clamped to 0..100 and kept in memory per instance, with the idle-window
   start, like dumontd's telemetry map;
5. write-behind: instances.last_heartbeat is updated at most every 15 s per instance;
6. answers {"commands": [], "heartbeat_interval_s": 10, "next_heartbeat_s": 10}.

It reads the same SQLite schema dumontd writes (it is given a copy of the database api_seed made).
Not done here (dumontd does it): pending agent commands and their results, enqueuing the instance for
the controller, idle-window arithmetic for next_heartbeat_s. Run:

    DUMONT_REF_DB=/path/dumont.db /usr/bin/python3 -m uvicorn --app-dir bench api_ref_fastapi:app \
        --host 127.0.0.1 --port 18766 --no-access-log --log-level warning
"""

import hashlib
import os
import sqlite3
import time
from typing import List, Optional

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Extra

DB_PATH = os.environ.get("DUMONT_REF_DB", "dumont.db")
HEARTBEAT_INTERVAL_S = 10
GPU_THRESHOLD_PCT = 5.0

db = sqlite3.connect(DB_PATH, check_same_thread=False, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("PRAGMA busy_timeout=5000")

# instance id -> [last_heartbeat_ms, max_gpu_util, gpu_count, idle_since_ms]
telemetry = {}

INSTANCE_COLS = (
    "id, owner, name, provider, offer_id, gpu, image, desired, hib_enabled, gpu_threshold_pct, idle_seconds, "
    "release_after_seconds, state, machine_id, attempt, price_per_hour, machine_json, command_json, last_snapshot, "
    "repo_password, message, state_since, last_heartbeat, released, created_at, updated_at"
)


class Strict(BaseModel):
    class Config:
        extra = Extra.forbid


class Gpu(Strict):
    index: Optional[int] = None
    name: Optional[str] = None
    util_pct: Optional[float] = None
    mem_used_mb: Optional[int] = None
    mem_total_mb: Optional[int] = None


class GpuProcess(Strict):
    gpu: Optional[int] = None
    pid: Optional[int] = None
    used_mem_mb: Optional[int] = None


class CommandResult(BaseModel):
    id: str
    ok: bool = False
    snapshot_id: Optional[str] = None
    error: Optional[str] = None


class Status(Strict):
    instance_id: str
    gpu_source: Optional[str] = None
    gpu_error: Optional[str] = None
    gpus: Optional[List[Gpu]] = None
    gpu_processes: Optional[List[GpuProcess]] = None
    load_1m: Optional[float] = None
    cpu_cores: Optional[int] = None
    ram_total_mb: Optional[int] = None
    ram_used_mb: Optional[int] = None
    disk_total_gb: Optional[float] = None
    disk_used_gb: Optional[float] = None
    command_results: Optional[List[CommandResult]] = None


app = FastAPI()


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.post("/api/v1/agent/status")
async def agent_status(body: Status, authorization: Optional[str] = Header(default=None)):
    token = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
    if not token.startswith("dat_"):
        raise HTTPException(401, "not an agent token")
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    t = db.execute(
        "SELECT token_hash, instance_id, kind, attempt, created_at, expires_at, used_at, revoked_at "
        "FROM agent_tokens WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if t is None or t[2] != "agent" or t[7] is not None:
        raise HTTPException(401, "unknown or revoked agent token")
    if body.instance_id != t[1]:
        raise HTTPException(403, "this agent token belongs to another machine")
    i = db.execute("SELECT " + INSTANCE_COLS + " FROM instances WHERE id = ?", (t[1],)).fetchone()
    if i is None:
        raise HTTPException(404, "instance not found")
    if t[3] != i[14]:
        raise HTTPException(403, "this agent belongs to a replaced machine")
    now_ms = int(time.time() * 1000)
    utils = [min(100.0, max(0.0, g.util_pct)) for g in (body.gpus or []) if g.util_pct is not None]
    prev = telemetry.get(i[0])
    idle = bool(utils) and max(utils) < (i[9] if i[9] is not None else GPU_THRESHOLD_PCT)
    idle_since = 0
    if idle:
        idle_since = prev[3] if prev and prev[3] and now_ms - prev[0] <= 3 * HEARTBEAT_INTERVAL_S * 1000 else now_ms
    telemetry[i[0]] = [now_ms, max(utils) if utils else 0.0, len(utils), idle_since]
    now_s = now_ms // 1000
    if now_s - i[22] >= 15:  # write-behind, like dumontd
        db.execute("UPDATE instances SET last_heartbeat = ? WHERE id = ?", (now_s, i[0]))
    return {"commands": [], "heartbeat_interval_s": HEARTBEAT_INTERVAL_S, "next_heartbeat_s": HEARTBEAT_INTERVAL_S}
