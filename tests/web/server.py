"""Starts `llmem serve --port 0` for a test and talks to it with urllib (stdlib only)."""

import json
import subprocess
import urllib.error
import urllib.request


class Server:
    def __init__(self, binary):
        self.binary = binary
        self.proc = subprocess.Popen([binary, "serve", "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("llmem serve: http://"):
            self.proc.kill()
            raise RuntimeError("server did not start: %r %s" % (line, self.proc.stderr.read()))
        self.url = line.split(": ", 1)[1].rstrip("/")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, path, body=None, raw=None, method=None, timeout=60):
        """Returns (status, content_type, text)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                return res.status, res.headers.get("Content-Type", ""), res.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def cli(self, *args):
        return subprocess.run([self.binary, *args], check=True, capture_output=True,
                              text=True).stdout
