"""A fake Hugging Face hub for tests: the few endpoints `snapshot_download` calls (repo info,
the tree listing, file metadata and contents), serving local directories. Point HF_ENDPOINT at
`url`; `downloads` counts file fetches per repository, which is how a test tells that a model
was downloaded once. A test harness only, like node_agent.py; nothing reaches a real hub."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    """Serves {repo_id: directory}; every repository has one commit, `sha`."""

    def __init__(self, repos: dict[str, Path], host: str = "127.0.0.1"):
        self.repos = {repo: Path(path) for repo, path in repos.items()}
        self.downloads: Counter[str] = Counter()
        self.sha = hashlib.sha1(json.dumps(sorted(repos)).encode()).hexdigest()
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
                      head: bool = False) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, value) -> None:
                self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

            def _not_found(self, head: bool = False) -> None:
                self._send(404, b'{"error": "Repository not found"}',
                           {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"},
                           head=head)

            def _route(self, head: bool) -> None:
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = "/".join(parts[2:4])
                    if repo not in hub.repos:
                        return self._not_found(head)
                    rest = parts[4:]
                    root = hub.repos[repo]
                    if not rest or rest[0] == "revision":
                        return self._json({"id": repo, "modelId": repo, "sha": hub.sha,
                                           "siblings": [{"rfilename": str(p.relative_to(root))}
                                                        for p in hub.files(repo)]})
                    if rest[0] == "tree":
                        return self._json([{"type": "file", "path": str(p.relative_to(root)),
                                            "size": p.stat().st_size,
                                            "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                                           for p in hub.files(repo)])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = "/".join(parts[:2])
                    if repo not in hub.repos:
                        return self._not_found(head)
                    path = hub.repos[repo] / "/".join(parts[4:])
                    if not path.is_file():
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head=head)
                    data = path.read_bytes()
                    if not head:
                        hub.downloads[repo] += 1
                    return self._send(200, data, {
                        "X-Repo-Commit": hub.sha,
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                        "Content-Type": "application/octet-stream"}, head=head)
                return self._not_found(head)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._route(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(head=True)

        return Handler
