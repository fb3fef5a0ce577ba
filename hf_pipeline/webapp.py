"""The one way the project serves a web app: uvicorn in the calling thread, its address announced once it listens.

The chat server (``serve.py``) and the ranking page (``ranking_ui.py``) both run a Starlette/FastAPI app with it:
``port=0`` picks a free port, and ``on_ready(url)`` hears the address actually bound; Ctrl-C stops the server
cleanly; a port that cannot be bound is one line (``ConfigError``). An exception raised by ``on_ready`` stops the
server and is raised again in the caller.
"""

from __future__ import annotations

from typing import Callable

from .errors import ConfigError


def run_app(app, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve ``app`` on ``host:port`` until Ctrl-C, SIGTERM or ``server.should_exit`` (the app may set it)."""
    import uvicorn

    failures: list[BaseException] = []

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            bound, bound_port = self.servers[0].sockets[0].getsockname()[:2]
            try:
                on_ready(f"http://{f'[{bound}]' if ':' in bound else bound}:{bound_port}/")
            except BaseException as e:  # stop serving, raise it in the caller
                failures.append(e)
                self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            ws="none", timeout_graceful_shutdown=3)
    server = Server(config)
    app.state.server = server  # for an app that stops itself (the ranking page, once everything is ranked)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C
        pass
    except SystemExit:
        if server.started:
            raise
        raise ConfigError(f"cannot listen on {host}:{port} (see the error above)") from None
    if failures:
        raise failures[0]
