#!/usr/bin/env python3
"""A Python client for poolgate's WebSocket RPC (pip install websockets):
sign in (with a one-time code if asked), step 1, step 2, printing the pushed task events.

    python3 examples/rpc_client.py ws://127.0.0.1:8080/ astravdi 'Bazalt1!' pool-win-1
"""
import asyncio
import itertools
import json
import sys

import websockets

ids = itertools.count(1)


async def call(ws, name, args):
    rid = str(next(ids))
    await ws.send(json.dumps({"namespace": "rpc", "name": name, "id": rid, "args": args}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["namespace"] == "events":
            print("event:", frame["args"])
        elif frame["id"] == rid:
            return frame


async def wait(ws, task_id):
    while True:
        frame = json.loads(await ws.recv())
        if frame["namespace"] == "events" and frame["args"].get("id") == task_id:
            status = frame["args"]["status"]
            print("  ", status, frame["args"].get("progress", ""))
            if status not in ("PENDING", "RUNNING"):
                return status


async def main(url, user, password, pool_name):
    async with websockets.connect(url) as ws:
        reply = await call(ws, "auth", {"username": user, "password": password})
        if reply["name"] == "error" and reply["args"].get("err_code") == 100:
            code = input("one-time code: ")
            reply = await call(ws, "otp_verify", {"mfa_token": reply["args"]["mfa_token"], "otp_code": code})
        if reply["name"] == "error":
            args = reply["args"]
            sys.exit(f"sign-in failed: {args.get('detail') or args['message']} ({args['code']})")
        pools = (await call(ws, "pools", {}))["args"]
        pool = next((p for p in pools if pool_name in (p["name"], p["id"])), None)
        if pool is None:
            names = ", ".join(p["name"] for p in pools) or "none"
            sys.exit(f"{user} has no pool {pool_name!r}; {user}'s pools: {names}")

        while True:  # step 1; a CANCELLED task is simply asked for again
            reply = await call(ws, "pool_request", {"pool_id": pool["id"]})
            if reply["name"] == "error":
                sys.exit(f"step 1 refused: {reply['args']}")
            task = reply["args"]["task"]
            status = task["status"] if task["status"] == "COMPLETED" else await wait(ws, task["id"])
            if status == "COMPLETED":
                break
            if status != "CANCELLED":
                sys.exit(f"step 1 ended {status}")

        while True:  # step 2
            reply = await call(ws, "connect_info", {"pool_id": pool["id"], "remote_protocol": 1})
            if reply["name"] == "error":
                sys.exit(f"step 2 refused: {reply['args']}")
            if "connection" in reply["args"]:
                c = reply["args"]["connection"]
                print(f"connect to {c['host']}:{c['port']} ({c['verbose_name']})")
                return
            await wait(ws, reply["args"]["task"]["id"])


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL USER PASSWORD POOL (name or id)")
    asyncio.run(main(*sys.argv[1:5]))
