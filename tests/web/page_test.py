#!/usr/bin/env python3
"""Drives the page of `llmem serve` in headless Chromium (Debian's `chromium`) and checks that
the numbers it shows equal the CLI's for the same inputs; saves screenshots.

The form is filled through URL query parameters, which the page reads on load (the same
mechanism that makes a result a shareable link), then the page calls /api/estimate itself.

Usage: page_test.py path/to/llmem OUT_DIR
"""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

from server import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(args, url, profile):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", "--user-data-dir=" + profile,
           "--virtual-time-budget=30000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def shown_numbers(dom):
    """data-key -> integer, for every number the page tags with its JSON path."""
    found = {}
    for key, text in re.findall(r'data-key="([^"]+)">([^<]*)<', dom):
        found.setdefault(key, int(text.replace(",", "")))
    return found


def check_case(server, out_dir, profile, name, params, cli_args):
    url = server.url + "/?" + urllib.parse.urlencode(params)
    dom = chromium(["--dump-dom"], url, profile).stdout
    if 'data-state="done"' not in dom:
        err = re.search(r'<section id="error"[^>]*>(.*?)</section>', dom, re.S)
        raise AssertionError("%s: the page did not finish (%s)" % (name, err and err.group(1)))
    expected = json.loads(server.cli("estimate", *cli_args, "--format", "json"))
    shown = shown_numbers(dom)
    keys = ["peak.allocated_bytes", "peak.reserved_bytes", "peak.device_bytes",
            "gpu.capacity_bytes", "headroom_bytes", "first_step_peak_bytes",
            "steady_step_peak_bytes"]
    keys += ["components." + c for c in expected["components"]]
    keys += ["phase_peaks." + p for p in expected["phase_peaks"]]
    keys += ["ranks.%d.device_bytes" % i for i in range(len(expected.get("ranks", [])))]
    if expected["gpu"].get("comm_bytes", 0) > 0:
        keys.append("gpu.comm_bytes")
    def json_value(doc, key):
        for part in key.split("."):
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        return doc

    for key in keys:
        assert key in shown, "%s: %s is not on the page" % (name, key)
        assert shown[key] == json_value(expected, key), \
            "%s: %s page %d != CLI %d" % (name, key, shown[key], json_value(expected, key))
    verdict = "FITS" if expected["fits"] else "DOES NOT FIT"
    assert '<span class="badge" id="verdict-badge">%s</span>' % verdict in dom, name
    assert "<polyline" in dom, "%s: no timeline" % name
    assert html.escape(expected["model"]["name"]) in dom
    # The page shows the equivalent command line: it must be the one we compared with.
    cmd = re.search(r'<code id="cmdline">([^<]*)</code>', dom).group(1)
    assert cmd.startswith("llmem estimate --model " + params["model"]), cmd
    shot = os.path.join(out_dir, "web-%s.png" % name)
    chromium(["--screenshot=" + shot, "--window-size=1400,1500"], url, profile)
    assert os.path.getsize(shot) > 10000, "%s: empty screenshot" % shot
    print("ok   %s: %d numbers equal the CLI's; %s" % (name, len(keys), shot))


def check_report(server, out_dir, profile):
    """`estimate --format html`: self-contained, its numbers equal the JSON's; a screenshot."""
    args = ["estimate", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "RTX4090", "--batch", "2",
            "--seq", "2048", "--attention", "sdpa", "--grad-ckpt", "--quant", "nf4",
            "--lora-rank", "16"]
    page = server.cli(*args, "--format", "html")
    expected = json.loads(server.cli(*args, "--format", "json"))
    for banned in ("http://", "https://", "<script", "<link", "<img", "<iframe", "@import"):
        assert banned not in page, "report.html contains %s" % banned
    shown = shown_numbers(page)
    keys = ["peak.allocated_bytes", "peak.reserved_bytes", "peak.device_bytes",
            "gpu.capacity_bytes", "headroom_bytes"]
    keys += ["components." + c for c in expected["components"]]
    for key in keys:
        value = expected
        for part in key.split("."):
            value = value[part]
        assert shown.get(key) == value, "report.html: %s %s != %s" % (key, shown.get(key), value)
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page)
    shot = os.path.join(out_dir, "report.png")
    chromium(["--screenshot=" + shot, "--window-size=1100,1900"], "file://" + os.path.abspath(path),
             profile)
    assert os.path.getsize(shot) > 10000, "empty screenshot " + shot
    print("ok   report.html: self-contained, %d numbers equal the JSON's; %s" % (len(keys), shot))


def check_error(server, profile):
    url = server.url + "/?" + urllib.parse.urlencode(
        {"model": "facebook/opt-125m", "precision": "fp8"})
    dom = chromium(["--dump-dom"], url, profile).stdout
    m = re.search(r'<section id="error" class="error">([^<]*)</section>', dom)
    assert m and m.group(1).startswith("precision:"), "no error shown: %s" % (m and m.group(0))
    assert 'data-state="error"' in dom
    print("ok   a bad value shows the API's error naming the field")


def main():
    binary, out_dir = sys.argv[1], sys.argv[2]
    if not CHROMIUM:
        sys.exit("chromium is not installed (apt-get install chromium)")
    os.makedirs(out_dir, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="llmem-chromium-")
    try:
        with Server(binary) as server:
            check_case(server, out_dir, profile, "qlora-llama8b-4090",
                       {"model": "meta-llama/Llama-3.1-8B", "gpu": "RTX4090", "batch": "2",
                        "seq": "2048", "attention": "sdpa", "grad_ckpt": "true",
                        "lora_rank": "16", "quant": "nf4"},
                       ["--model", "meta-llama/Llama-3.1-8B", "--gpu", "RTX4090", "--batch", "2",
                        "--seq", "2048", "--attention", "sdpa", "--grad-ckpt", "--lora-rank", "16",
                        "--quant", "nf4"])
            check_case(server, out_dir, profile, "full-opt1.3b-a100",
                       {"model": "facebook/opt-1.3b", "batch": "4", "seq": "512"},
                       ["--model", "facebook/opt-1.3b", "--batch", "4", "--seq", "512"])
            check_case(server, out_dir, profile, "oom-llama8b-24gib",
                       {"model": "meta-llama/Llama-3.1-8B", "gpu_mem": "24", "batch": "1",
                        "seq": "1024", "precision": "bf16"},
                       ["--model", "meta-llama/Llama-3.1-8B", "--gpu-mem", "24", "--batch", "1",
                        "--seq", "1024", "--precision", "bf16"])
            check_case(server, out_dir, profile, "zero1-dp2-pp2-llama8b-h100",
                       {"model": "meta-llama/Llama-3.1-8B", "gpu": "H100-80GB",
                        "method": "zero1", "dp": "2", "pp": "2", "batch": "1", "seq": "2048",
                        "grad_ckpt": "true"},
                       ["--model", "meta-llama/Llama-3.1-8B", "--gpu", "H100-80GB", "--method",
                        "zero1", "--dp", "2", "--pp", "2", "--batch", "1", "--seq", "2048",
                        "--grad-ckpt"])
            check_case(server, out_dir, profile, "torchtune-compile-llama3b-a100",
                       {"model": "meta-llama/Llama-3.2-3B", "framework": "torchtune",
                        "precision": "bf16", "attention": "sdpa", "batch": "2", "seq": "2048",
                        "grad_ckpt": "true", "compile": "true", "packed": "true"},
                       ["--model", "meta-llama/Llama-3.2-3B", "--framework", "torchtune",
                        "--precision", "bf16", "--attention", "sdpa", "--optimizer", "adamw",
                        "--batch", "2", "--seq", "2048", "--grad-ckpt", "--compile", "--packed"])
            check_case(server, out_dir, profile, "liger-lora-qwen2-h100",
                       {"model": "Qwen/Qwen2.5-7B", "gpu": "H100-80GB", "attention": "sdpa",
                        "batch": "4", "seq": "2048", "grad_ckpt": "true", "lora_rank": "16",
                        "liger": "true"},
                       ["--model", "Qwen/Qwen2.5-7B", "--gpu", "H100-80GB", "--attention",
                        "sdpa", "--batch", "4", "--seq", "2048", "--grad-ckpt", "--lora-rank",
                        "16", "--liger"])
            check_error(server, profile)
            check_report(server, out_dir, profile)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
