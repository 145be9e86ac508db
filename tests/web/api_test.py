#!/usr/bin/env python3
"""`llmem serve` as a client sees it: a real server on a free port, urllib, several threads.

Usage: api_test.py path/to/llmem
"""

import json
import subprocess
import sys
import threading
import unittest
import urllib.error
import urllib.request

from server import Server

BINARY = None


class ApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(BINARY)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def error(self, status, path, body=None, raw=None, field=None, method=None):
        got, ctype, text = self.server.request(path, body=body, raw=raw, method=method)
        self.assertEqual(got, status, text)
        self.assertTrue(ctype.startswith("application/json"), ctype)
        err = json.loads(text)
        self.assertIsInstance(err["error"], str)
        self.assertTrue(err["error"])
        if field is not None:
            self.assertEqual(err.get("field"), field, err)
        return err

    def test_binds_localhost_by_default(self):
        self.assertTrue(self.server.url.startswith("http://127.0.0.1:"), self.server.url)

    def test_port_in_use(self):
        port = self.server.url.rsplit(":", 1)[1]
        second = subprocess.run([BINARY, "serve", "--port", port], capture_output=True, text=True,
                                timeout=30)
        self.assertEqual(second.returncode, 2, second.stdout)
        self.assertIn("cannot listen", second.stderr)

    def test_page_and_assets(self):
        for path, ctype in [("/", "text/html"), ("/app.js", "text/javascript"),
                            ("/style.css", "text/css")]:
            status, got, text = self.server.request(path)
            self.assertEqual(status, 200, path)
            self.assertTrue(got.startswith(ctype), got)
            self.assertNotIn("https://", text)

    def test_models(self):
        status, _, text = self.server.request("/api/models")
        self.assertEqual(status, 200)
        self.assertEqual(text, self.server.cli("models", "--format", "json"))

    def test_estimate_equals_cli(self):
        body = {"model": "facebook/opt-1.3b", "batch": 4, "seq": 512}
        status, ctype, text = self.server.request("/api/estimate", body)
        self.assertEqual(status, 200, text)
        self.assertTrue(ctype.startswith("application/json"))
        self.assertEqual(text, self.server.cli("estimate", "--model", "facebook/opt-1.3b",
                                               "--batch", "4", "--seq", "512", "--format", "json"))

    def test_estimate_qlora_equals_cli(self):
        body = {"model": "meta-llama/Llama-3.1-8B", "gpu": "RTX4090", "batch": 2, "seq": 1024,
                "precision": "bf16-mixed", "attention": "sdpa", "grad_ckpt": True,
                "quant": "nf4", "lora_rank": 16}
        status, _, text = self.server.request("/api/estimate", body)
        self.assertEqual(status, 200, text)
        self.assertEqual(text, self.server.cli(
            "estimate", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "RTX4090", "--batch", "2",
            "--seq", "1024", "--precision", "bf16-mixed", "--attention", "sdpa", "--grad-ckpt",
            "--quant", "nf4", "--lora-rank", "16", "--format", "json"))

    def test_inspect(self):
        status, _, text = self.server.request("/api/inspect", {"model": "gpt2"})
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["params"], 124439808)

    def test_malformed_json(self):
        for raw in [b"{", b"{\"model\": }", b"not json", b"\xff\xfe", b""]:
            self.error(400, "/api/estimate", raw=raw)
        self.error(400, "/api/estimate", body=["facebook/opt-1.3b"])
        self.error(400, "/api/estimate", body="facebook/opt-1.3b")

    def test_wrong_types_name_the_field(self):
        base = {"model": "facebook/opt-125m"}
        for key, value in [("batch", "four"), ("batch", {"n": 4}), ("seq", [512]),
                           ("seq", True), ("precision", 16), ("lora_rank", "r"),
                           ("gpu", "Voodoo2"), ("optimizer", "adamw9000")]:
            with self.subTest(key=key, value=value):
                self.error(400, "/api/estimate", body=dict(base, **{key: value}), field=key)
        self.error(400, "/api/estimate", body={"model": 42}, field="model")
        self.error(400, "/api/estimate", body={"batch": 1}, field="model")
        self.error(400, "/api/estimate", body=dict(base, colour="blue"), field="colour")

    def test_unknown_model(self):
        err = self.error(400, "/api/estimate", body={"model": "facebook/opt-1.3c"}, field="model")
        self.assertIn("opt-1.3b", err["error"])  # the suggestion
        self.error(400, "/api/inspect", body={"model": "no/such-model"}, field="model")

    def test_no_local_files(self):
        for path in ["/etc/passwd", "../../etc/passwd", "./config.json"]:
            self.error(400, "/api/estimate", body={"model": path}, field="model")
        self.error(400, "/api/estimate", body={"model": "facebook/opt-125m",
                                               "deepspeed_config": "/etc/hostname"},
                   field="deepspeed_config")

    def test_oversize_body(self):
        big = json.dumps({"model": "facebook/opt-125m", "pad": "x" * (2 << 20)}).encode()
        try:
            self.error(413, "/api/estimate", raw=big)
        except (ConnectionError, OSError) as e:  # a server may close before reading it all
            self.fail("connection error instead of 413: %r" % e)

    def test_deep_nesting(self):
        deep = '{"model": "facebook/opt-125m", "lora": ' + '{"a": ' * 50000 + '1' + '}' * 50001
        self.error(400, "/api/estimate", raw=deep.encode())
        self.error(400, "/api/estimate", raw=b"[" * 400000 + b"]" * 400000)

    def test_any_content_type(self):
        # `curl -d` declares form data; the body is still read as JSON, up to the same limit.
        body = json.dumps({"model": "facebook/opt-125m", "batch": 2, "pad": "x" * 50000})
        req = urllib.request.Request(self.server.url + "/api/estimate", data=body.encode(),
                                     headers={"Content-Type":
                                              "application/x-www-form-urlencoded"})
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(req, timeout=60)
        self.assertEqual(ctx.exception.code, 400)
        self.assertEqual(json.loads(ctx.exception.read())["field"], "pad")

    def test_pasted_config(self):
        config = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816,
                  "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 4,
                  "vocab_size": 32000, "max_position_embeddings": 2048}
        status, _, text = self.server.request("/api/estimate", {"model": config, "batch": 2})
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["model"]["family"], "llama")
        status, _, text = self.server.request("/api/inspect", {"model": config})
        self.assertEqual(status, 200, text)
        bad = dict(config, num_hidden_layers="four")
        err = self.error(400, "/api/estimate", body={"model": bad}, field="model")
        self.assertIn("num_hidden_layers", err["error"])

    def test_methods_and_paths(self):
        self.error(405, "/api/estimate")
        self.error(404, "/api/nothing")
        self.error(404, "/../../etc/passwd")

    def test_concurrent_clients(self):
        cases = [({"model": "facebook/opt-125m", "batch": b}, 200) for b in (1, 2, 3)]
        cases += [({"model": "facebook/opt-125m", "batch": "x"}, 400), ({"model": "nope"}, 400)]
        expected = {}
        for body, status in cases:
            if status == 200:
                expected[body["batch"]] = self.server.cli(
                    "estimate", "--model", body["model"], "--batch", str(body["batch"]),
                    "--format", "json")
        failures = []

        def client(k):
            for i in range(6):
                body, status = cases[(k + i) % len(cases)]
                got, _, text = self.server.request("/api/estimate", body)
                if got != status:
                    failures.append((body, got, text))
                elif status == 200 and text != expected[body["batch"]]:
                    failures.append((body, "different answer"))
                elif status == 400 and "error" not in json.loads(text):
                    failures.append((body, "no error key"))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        status, _, _ = self.server.request("/api/models")
        self.assertEqual(status, 200)  # still serving


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main(verbosity=2)
