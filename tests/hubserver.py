"""A loopback stand-in for the Hugging Face hub's file routes (HEAD/GET .../resolve/REV/FILE)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves ``files[(repo_id, filename)] = bytes`` on 127.0.0.1; counts GETs per file."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = files
        self.gets: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _lookup(self):
                parts = unquote(urlparse(self.path).path).strip("/").split("/")
                # owner/name/resolve/revision/filename...
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, None
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                return filename, outer.files.get((repo, filename))

            def _headers(self, data: bytes):
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                name, data = self._lookup()
                if data is None:
                    return self._missing()
                self.send_response(200)
                self._headers(data)

            def do_GET(self):
                name, data = self._lookup()
                if data is None:
                    return self._missing()
                outer.gets[name] = outer.gets.get(name, 0) + 1
                self.send_response(200)
                self._headers(data)
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def files_from_folder(repo_id: str, folder: Path) -> dict[tuple[str, str], bytes]:
    return {(repo_id, p.name): p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
