#!/usr/bin/env python3
"""A thin client written for the reference mock's v2 API (devalv/mockapi), as such clients are:
plain HTTP with `Authorization: JWT <token>`, status updates on the per-client WebSocket with
`Cookie: JWT <token>`. Runs unchanged against poolgate; only the address differs.

    pip install websockets
    python3 examples/v2_client.py --server http://127.0.0.1:8080 --user astravdi --pool pool-win-1
    python3 examples/v2_client.py --user user-4 --otp "$(date +%y%m%d)"   # a demo OTP user
"""
import argparse
import asyncio
import json
import urllib.error
import urllib.request

import websockets


def call(server, method, path, token=None, body=None):
    req = urllib.request.Request(server + path, method=method)
    if token:
        req.add_header("Authorization", f"JWT {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def login(server, user, password, otp):
    """Signs in as a real client does: username and password first; only when the server
    answers 428 for a one-time code (err_code 100) is the code sent, with the password again.
    A normal run therefore never produces a failed sign-in (which would count towards the
    server's lockout)."""
    creds = {"username": user, "password": password, "ldap": False}
    status, body = call(server, "POST", "/api/v2/users/login/", body=creds)
    if status == 428:
        detail = body["detail"][0]
        if detail["err_code"] != 100:
            # ADFS (101) or a hardware token (102): next_step says where; poolgate answers
            # there that the method is not available on this server.
            status, body = call(server, "POST", detail["next_step"], body={"username": user})
            raise SystemExit(f"{user} cannot sign in here: {status} {body['detail'][0]['msg']}")
        if otp is None:
            otp = input("one-time code: ")
        status, body = call(server, "POST", "/api/v2/users/login/", body={**creds, "otp_code": otp})
    if status != 200:
        raise SystemExit(f"login failed: {status} {body}")
    return body["data"]["access_token"]


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="http://127.0.0.1:8080")
    p.add_argument("--user", default="astravdi")
    p.add_argument("--password", default="Bazalt1!")
    # The demo server's "date" code is today's date as YYMMDD; prompted for when not given.
    p.add_argument("--otp", help="one-time code, sent only if the server asks for one")
    p.add_argument("--pool", default="pool-win-1")
    a = p.parse_args()

    token = login(a.server, a.user, a.password, a.otp)
    claims = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    status, pools = call(a.server, "GET", "/api/v2/pools/", token)
    pool = next((x for x in pools["data"] if a.pool in (x["name"], x["id"])), None)
    if pool is None:
        raise SystemExit(f"{a.user} has no pool {a.pool!r}")
    print(f"{len(pools['data'])} pools; using {pool['name']}")

    ws_url = a.server.replace("http", "ws", 1) + f"/api/v2/pools/ws/{claims['client_id']}/"
    async with websockets.connect(ws_url, additional_headers={"Cookie": f"JWT {token}"}) as ws:
        async def wait_for(task_id):
            while True:
                msg = json.loads(await ws.recv())
                print("  ws:", msg)
                if msg["id"] == task_id and msg["status"] not in ("PENDING", "RUNNING"):
                    return msg["status"]

        path = f"/api/v2/pools/{pool['id']}/connect/"
        while True:
            status, body = call(a.server, "GET", path, token)
            print("step 1:", status, body)
            if status == 200:
                break
            if status != 202:
                raise SystemExit("step 1 refused")
            await wait_for(body["data"]["id"])
        req = {"remote_protocol": 1, "width": 1920, "height": 1080, "password": a.password}
        while True:
            status, body = call(a.server, "POST", path, token, req)
            print("step 2:", status, body)
            if status == 200:
                print("connect to", body["data"]["host"], body["data"]["port"])
                break
            if status != 202:
                raise SystemExit("step 2 refused")
            await wait_for(body["data"]["id"])
    status, _ = call(a.server, "POST", "/api/v2/users/logout/", token)
    print("logout:", status)


if __name__ == "__main__":
    asyncio.run(main())
