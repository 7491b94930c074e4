"""One client for covm's HTTP API on its UNIX socket (Cloud Hypervisor's
API: `/api/v1/<endpoint>`, JSON bodies, errors as a list of messages)."""

import http.client
import json
import os
import socket
import time


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to covm's API socket (kept alive across
    requests by whoever holds it)."""

    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def call(sock, method, endpoint, body=None, timeout=30):
    """One request; (status, body bytes). `body` is sent as JSON."""
    connection = UnixConnection(sock, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, "/api/v1/" + endpoint.lstrip("/"),
                           body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get_json(sock, endpoint):
    """A GET answered 200, as JSON; None for any other answer."""
    status, body = call(sock, "GET", endpoint)
    return json.loads(body) if status == 200 else None


def error_text(body):
    """An error body (a JSON list of messages) as one line."""
    try:
        return ": ".join(json.loads(body))
    except (ValueError, TypeError):
        return body.decode(errors="replace")


def wait_ready(sock, timeout=10):
    """Waits until covm answers vmm.ping on `sock`."""
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(sock):
            try:
                if call(sock, "GET", "vmm.ping", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"covm never answered on {sock}")
