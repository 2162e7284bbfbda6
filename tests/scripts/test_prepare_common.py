"""scripts/_prepare_common.py: the resumable parallel downloader and input resolution.

Also home of the local HTTP server the other test_prepare_* tests use (127.0.0.1 only, started
and stopped by the test; nothing leaves the machine).
"""

import collections
import contextlib
import functools
import http.server
import io
import os
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import _prepare_common as common  # noqa: E402


def png_bytes(value=120, size=(6, 5)):
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; /flaky/<name> fails once with 500, /slow/<name> stalls 2 s."""

    def __init__(self, *args, server_state, **kwargs):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's name)
        with self.state["lock"]:
            self.state["requests"][self.path] += 1
            count = self.state["requests"][self.path]
        if self.path.startswith("/flaky/") and count == 1:
            self.send_error(500, "try again")
            return
        if self.path.startswith("/slow/"):
            time.sleep(2)
        self.path = "/" + self.path.split("/", 2)[-1] if self.path.startswith(
            ("/flaky/", "/slow/")) else self.path
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder):
    """A local HTTP server on 127.0.0.1 for `folder`; yields (base URL, request counter)."""
    state = {"requests": collections.Counter(), "lock": threading.Lock()}
    handler = functools.partial(_Handler, directory=str(folder), server_state=state)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state["requests"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_images_retries_skips_and_reports(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.png").write_bytes(png_bytes(10))
    (site / "c.jpg").write_bytes(png_bytes(30))
    out = tmp_path / "images"
    with serve(site) as (base, requests):
        jobs = [("a", base + "a.png"), ("b", base + "missing.jpg"), ("c/1", base + "flaky/c.jpg")]
        done, failures = common.download_images(jobs, str(out), workers=3, timeout=5,
                                                retries=3, backoff=0)
        assert sorted(done) == ["a", "c/1"]
        assert open(done["a"], "rb").read() == png_bytes(10)
        assert os.path.basename(done["c/1"]) == "c%2F1.jpg"  # ids are made file-name safe
        assert [(f[0], f[1]) for f in failures] == [("b", base + "missing.jpg")]
        assert "404" in failures[0][2]
        # 404 is permanent: one attempt; the flaky URL failed once, then succeeded.
        assert requests["/missing.jpg"] == 1 and requests["/flaky/c.jpg"] == 2
        assert sorted(os.listdir(out)) == ["a.png", "c%2F1.jpg"]  # no temporary file left

        # A rerun downloads nothing that is already complete, and retries the failure.
        (out / "b.jpg.tmp-1-0123abcd").write_bytes(b"half")  # an interrupted earlier download
        done_again, failures_again = common.download_images(jobs, str(out), workers=2,
                                                            timeout=5, retries=2, backoff=0)
        assert done_again == done and len(failures_again) == 1
        assert requests["/a.png"] == 1 and requests["/flaky/c.jpg"] == 2
        assert requests["/missing.jpg"] == 2


def test_download_images_times_out(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes())
    with serve(tmp_path) as (base, requests):
        start = time.time()
        done, failures = common.download_images([("x", base + "slow/x.png")],
                                                str(tmp_path / "out"), timeout=0.3, retries=2,
                                                backoff=0)
        assert time.time() - start < 1.9  # two attempts of 0.3 s, not the server's 2 s each
    assert done == {} and len(failures) == 1 and "timed out" in failures[0][2]
    assert requests["/slow/x.png"] == 2


def test_resolve_input_local_folder_and_url(tmp_path):
    (tmp_path / "data.json.gz").write_bytes(b"abc")
    assert common.resolve_input(str(tmp_path), "data.json.gz", "unused") == str(
        tmp_path / "data.json.gz")
    with pytest.raises(common.PrepareError, match="other.gz"):
        common.resolve_input(str(tmp_path), "other.gz", "unused")
    with serve(tmp_path) as (base, requests):
        cache = tmp_path / "cache"
        path = common.resolve_input(base, "data.json.gz", str(cache))
        assert open(path, "rb").read() == b"abc"
        assert common.resolve_input(base, "data.json.gz", str(cache)) == path
        assert requests["/data.json.gz"] == 1  # the second call used the downloaded copy
        with pytest.raises(common.PrepareError, match="could not download"):
            common.resolve_input(base + "nothing.gz", "nothing.gz", str(cache))
