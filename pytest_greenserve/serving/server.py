"""``greenserve serve``, and :class:`ServerProcess`, which runs it as a child process.

``greenserve serve --model NAME|PATH --config onnx-cpu`` resolves the model as the plugin does
(:func:`~pytest_greenserve.models.resolve`), loads it with the configuration's engine (before
uvicorn starts, so ``/health`` answers only once the model can serve), and serves the app of
:mod:`.app` under uvicorn on 127.0.0.1 unless ``--host`` says otherwise. Bad input (an unknown
model, a bad configuration, weights that cannot be had) is one line on stderr and exit status 2.

The plugin starts it through :class:`ServerProcess`: the parent binds a listening socket on
port 0 (the kernel picks a free port; none is hard-coded) and hands it to the child
(``--fd``), so the port is known before the child runs and no other process can take it in
between. The child is started in its own session (process group) but stays a child of the
pytest process, so the meters' process tree (``meters/proctree.py``) covers it. Stopping it
sends SIGTERM (uvicorn's graceful shutdown), then SIGKILL to the whole process group, and
reaps it: no orphans. It also dies with its parent (``--parent-pid``: Linux's parent-death
signal, and a watchdog on the parent's pid), so a pytest killed by SIGTERM or SIGKILL, which
runs no atexit hook, leaves no server holding the model. ``--handle-json`` and ``--engine-class`` let the plugin hand over the
exact model handle and engine class of its session (a conftest's engine included).
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..engines.compile import MODES as COMPILE_MODES

__all__ = ["ServeError", "ServerProcess", "add_serve_arguments", "serve", "engine_class_ref", "tcp_socket"]

EXIT_USAGE = 2


class ServeError(Exception):
    """The server cannot be started or answered badly; the message is one line meant for the user."""


# ------------------------------------------------------------------ the command

def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from . import DEFAULT_NEW_TOKENS_MAX, DEFAULT_PROMPT_TOKENS_MAX

    p.add_argument("--model", required=False, metavar="NAME|PATH",
                   help="a registered model name (see `greenserve models`), NAME=/local/path, or a model directory")
    p.add_argument("--config", required=True, metavar="ENGINE-PROVIDER", help="serving configuration, e.g. onnx-cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000; 0: a free port, printed)")
    p.add_argument("--weights", default="auto", choices=("auto", "hub", "replica"),
                   help="auto (local path, else hub), hub, replica (random weights, real shapes)")
    p.add_argument("--new-tokens-max", type=int, default=DEFAULT_NEW_TOKENS_MAX, metavar="N",
                   help=f"ceiling on a request's max_tokens (default: {DEFAULT_NEW_TOKENS_MAX})")
    p.add_argument("--prompt-tokens-max", type=int, default=DEFAULT_PROMPT_TOKENS_MAX, metavar="N",
                   help=f"size limit on a prompt, in tokens (default: {DEFAULT_PROMPT_TOKENS_MAX})")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache of replicas and exports (default: the plugin's, $GREENSERVE_CACHE)")
    p.add_argument("--seed", type=int, default=0, help="replica weights' seed (default: 0)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for the engine")
    p.add_argument("--openvino-precision", default="f32", choices=("f32", "bf16", "f16", "default"))
    p.add_argument("--ort-spinning", default="on", choices=("on", "off"),
                   help="ONNX Runtime's CPU thread pools spin between operators (its default) or sleep")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="weights and activations (bf16: engines that support it, e.g. torch, jit)")
    p.add_argument("--compile-mode", default="auto", choices=COMPILE_MODES,
                   help="how the compile engine captures its decode step (default: auto)")
    # what the plugin passes (not for users): the session's own handle and engine class, a socket
    p.add_argument("--handle-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--engine-class", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    # the server dies with this process (ServerProcess passes its own pid); see _die_with_parent
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-parent-death-signal", action="store_true", help=argparse.SUPPRESS)


def _say(message: str) -> None:
    print(f"greenserve serve: {message}", file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): only this machine can connect."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: seconds an idle keep-alive connection is kept open (uvicorn's default, 5 s, closed the plugin's
#: and the benchmarks' connections during idle windows and other configurations' turns, so the
#: next request paid a reconnect or, with a client that does not retry, failed)
KEEP_ALIVE_S = 300
#: the interpreter's thread switch interval in the server (Python's default: 5 ms); see serve()
SWITCH_INTERVAL_S = 0.0002
#: seconds a server whose parent died is given to shut down gracefully before it exits hard
PARENT_GONE_GRACE_S = 3.0
#: how often the watchdog looks at the parent
PARENT_POLL_S = 0.5


def _parent_death_signal(sig: int) -> bool:
    """Linux's PR_SET_PDEATHSIG through ctypes: the kernel sends ``sig`` to this process when the
    thread that started it exits. False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die_with_parent(parent_pid: int, use_signal: bool = True) -> None:
    """This server ends when process ``parent_pid`` does, however it ends.

    A pytest session killed by SIGTERM (a CI cancel, ``timeout``) or SIGKILL runs no atexit
    hook, and the server runs in its own session, so nothing else would stop it: it would keep
    the model, and a GPU's memory, until someone noticed. On Linux the kernel sends SIGTERM the
    moment the parent goes (uvicorn's graceful shutdown); ``use_signal`` False where the parent
    started this process from a thread that may end before it (the signal follows the thread).
    Everywhere a watchdog thread polls the parent pid every :data:`PARENT_POLL_S` s, sends SIGTERM
    itself, and exits hard :data:`PARENT_GONE_GRACE_S` s later if a request still holds the process.
    """
    import threading

    if use_signal:
        _parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the signal was armed
        _say(f"the parent process {parent_pid} is gone; not serving")
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        _say(f"the parent process {parent_pid} is gone; shutting down")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except OSError:
            pass
        time.sleep(PARENT_GONE_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="greenserve-parent-watchdog", daemon=True).start()


def _engines(engine_class: str | None) -> dict:
    from ..engines import BUILTIN

    engines = {cls.name: cls for cls in BUILTIN}
    if engine_class:
        cls = import_engine_class(engine_class)
        engines[cls.name] = cls
    return engines


def import_engine_class(ref: str):
    module, _, qualname = ref.partition(":")
    if not module or not qualname:
        raise ServeError(f"--engine-class {ref!r}: expected MODULE:CLASS")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise ServeError(f"--engine-class {ref!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    return obj


def engine_class_ref(cls) -> tuple[str, str | None]:
    """``MODULE:QUALNAME`` of an engine class, and the directory to put on the child's path
    (None when it is importable as installed). A class defined in ``__main__`` cannot be served."""
    module = cls.__module__
    if module == "__main__" or "<locals>" in cls.__qualname__:
        raise ServeError(f"engine class {cls.__qualname__} is not importable by name, so it cannot be served over HTTP")
    root = None
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    if file:
        path = Path(file).resolve()
        up = module.count(".") + (1 if path.name == "__init__.py" else 0)
        root = str(path.parents[up])
    return f"{module}:{cls.__qualname__}", root


def _handle(args):
    from ..models import ModelError, WeightsUnavailable, default_cache_dir, parse_model_list, resolve, spec_for

    if args.handle_json:
        return handle_from_json(args.handle_json)
    if not args.model:
        raise ServeError("--model is required (a registered name, NAME=/local/path, or a model directory)")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    try:
        names, paths = parse_model_list(args.model)
        name = names[0]
        return resolve(spec_for(name, paths.get(name)), args.weights, paths.get(name), cache, args.seed,
                       progress=_say)
    except (ModelError, WeightsUnavailable) as exc:
        raise ServeError(str(exc)) from None


def handle_to_json(handle) -> str:
    data = asdict(handle)
    data["cache_dir"] = str(data["cache_dir"])
    data["eos_token_ids"] = list(data["eos_token_ids"])
    return json.dumps(data)


def handle_from_json(text: str):
    """The ModelHandle that :func:`handle_to_json` wrote."""
    from ..handle import ModelHandle

    data = json.loads(text)
    data["cache_dir"] = Path(data["cache_dir"])
    data["eos_token_ids"] = tuple(data.get("eos_token_ids") or ())
    return ModelHandle(**data)


class _FastTokenizer:
    """A model directory's ``tokenizer.json`` through the tokenizers library: the same ids as
    ``AutoTokenizer(..., add_special_tokens=False)`` for the fast tokenizers the models ship,
    without importing transformers (seconds) into a server that does not otherwise need it."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


def load_tokenizer(ref: str):
    """The model's tokenizer (``tokenizer.json`` directly where the directory has one, else
    transformers' AutoTokenizer), or None."""
    path = Path(ref) / "tokenizer.json"
    if path.is_file():
        try:
            from tokenizers import Tokenizer

            return _FastTokenizer(Tokenizer.from_file(str(path)))
        except Exception:
            pass
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref)
    except Exception:
        return None


def serve(args) -> int:
    """Load the model and serve it until SIGTERM/SIGINT. Raises ServeError (one line)."""
    from . import missing_serve_reason

    reason = missing_serve_reason()
    if reason:
        raise ServeError(reason)
    from ..configs import ConfigError, parse_config
    from ..engines.base import EngineError, EngineOptions, engine_dtypes

    if args.new_tokens_max < 1 or args.prompt_tokens_max < 1:
        raise ServeError("--new-tokens-max and --prompt-tokens-max must be at least 1")
    if args.fd is None and not 0 <= args.port <= 65535:
        raise ServeError(f"--port {args.port}: expected 0..65535")
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid, use_signal=not args.no_parent_death_signal)
    if args.fd is None and not is_loopback(args.host):
        _say(f"warning: --host {args.host} is not a loopback address: anyone who can reach this machine "
             "can send requests (there is no authentication)")
    engines = _engines(args.engine_class)
    try:
        config = parse_config(args.config, engines)
    except ConfigError as exc:
        raise ServeError(str(exc)) from None
    cls = engines[config.engine]
    why = cls.unavailable_reason(config.provider)
    if why:
        raise ServeError(f"{config} cannot run here: {why}")
    dtypes = engine_dtypes(cls)
    if args.dtype not in dtypes:
        raise ServeError(f"{config} serves {', '.join(dtypes)} only, not --dtype {args.dtype}")
    handle = _handle(args)
    engine = cls(handle, config.provider, EngineOptions(threads=args.threads,
                                                         openvino_precision=args.openvino_precision,
                                                         ort_spinning=args.ort_spinning == "on", dtype=args.dtype,
                                                         compile_mode=args.compile_mode, variant=config.variant,
                                                         progress=_say))
    _say(f"loading {handle.name} on {config} (pid {os.getpid()})")
    try:
        engine.load()
    except EngineError as exc:
        raise ServeError(str(exc).splitlines()[0]) from None
    except Exception as exc:
        raise ServeError(f"{config} could not load {handle.name}: {type(exc).__name__}: {exc}") from None
    tokenizer = load_tokenizer(handle.ref)
    if tokenizer is None:  # token-id prompts still work
        _say("no tokenizer; only token-id prompts are served")

    import uvicorn

    from ..context_window import context_window_of
    from .app import create_app, server_info
    from .engine_thread import EngineThread

    engine_thread = EngineThread()
    app = create_app(engine, model=handle.name, config=config.name, handle=handle, tokenizer=tokenizer,
                     new_tokens_max=args.new_tokens_max, prompt_tokens_max=args.prompt_tokens_max,
                     context_tokens=context_window_of(handle.ref), info=server_info(engine, handle),
                     engine_thread=engine_thread)
    if args.fd is not None:
        sock = tcp_socket(fileno=args.fd)
    else:
        sock = tcp_socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as exc:
            raise ServeError(f"cannot bind {args.host}:{args.port}: {exc.strerror or exc}") from None
        sock.listen(2048)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=2, timeout_keep_alive=KEEP_ALIVE_S))
    _say(f"serving {handle.name} on {config} at http://{host}:{port} (pid {os.getpid()})")
    # uvicorn's event loop on a thread of its own, the engine on this one (engine_thread.py says
    # why); uvicorn listens to signals only on the main thread, so they are handled here
    failed: list[BaseException] = []

    def run_uvicorn() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # said below, after the engine thread stops
            failed.append(exc)
        finally:
            engine_thread.stop()

    def shut_down(signum, frame) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shut_down)
    # The engine thread holds the GIL between operators; the event loop thread, woken to send a
    # streamed token, waited up to the 5 ms default switch interval for it, so tokens reached
    # the client in bursts (16 tokens of a tiny model within 0.3 ms of each other) and the ITL
    # a client measured was the interpreter's, not the model's. A switch costs microseconds.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    loop_thread = threading.Thread(target=run_uvicorn, name="greenserve-http", daemon=True)
    loop_thread.start()
    try:
        engine_thread.run_forever()
    finally:
        server.should_exit = True
        loop_thread.join(timeout=10)
        engine.close()
    if failed:
        raise ServeError(f"the HTTP server failed: {type(failed[0]).__name__}: {failed[0]}")
    return 0


def tcp_socket(family: int = socket.AF_INET, *, fileno: int | None = None) -> socket.socket:
    """A stream socket whose ``proto`` is IPPROTO_TCP, with TCP_NODELAY set: new, or adopted from ``fileno``.

    asyncio sets TCP_NODELAY on an accepted connection only when the socket object's ``proto``
    is IPPROTO_TCP, and ``accept()`` copies ``proto`` from the listening socket's object. A
    socket made as ``socket(AF_INET, SOCK_STREAM)`` has proto 0, so every connection it accepted
    kept Nagle's algorithm: uvicorn writes a response's headers and body separately, the body
    waited for the client's delayed ACK, and every keep-alive request paid ~40 ms (44 ms p50
    with http.client, httpx and a raw socket on the 2-core VM). TCP_NODELAY on the listening
    socket as well: Linux copies it to the connections it accepts, whatever asyncio does.
    """
    if fileno is not None:
        sock = socket.socket(fileno=fileno)  # family, type and proto read from the descriptor
        if sock.proto != socket.IPPROTO_TCP:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    else:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ------------------------------------------------------------------ the child process

_LIVE: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # a session that ends abruptly still leaves no server behind
    for server in list(_LIVE):
        server.stop()


class ServerProcess:
    """``greenserve serve`` as a child process on a free port of ``host``.

    ``start()`` starts it; ``wait_healthy()`` polls ``/health`` until it answers or
    ``health_timeout_s`` passes (ServeError with the log's tail; the child is stopped);
    ``stop()`` stops it (SIGTERM, then SIGKILL to its process group) and reaps it.
    """

    def __init__(self, serve_args: list[str], *, host: str = "127.0.0.1", health_timeout_s: float = 600.0,
                 python_path: list[str] | None = None, label: str = "greenserve serve", python: str | None = None):
        self.serve_args = list(serve_args)
        #: the interpreter to serve with: ours, or another environment's (an interleaved A/B's A
        #: side), which then imports its own pytest-greenserve, not what our PYTHONPATH names
        self.python = python
        self.host = host
        self.health_timeout_s = health_timeout_s
        self.python_path = [p for p in (python_path or []) if p]
        self.label = label
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self._log = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        sock = tcp_socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.bind((self.host, 0))  # the kernel picks a free port
            sock.listen(2048)
            self.port = sock.getsockname()[1]
            fd, log = tempfile.mkstemp(prefix="greenserve-serve-", suffix=".log")
            self.log_path = Path(log)
            self._log = os.fdopen(fd, "wb")
            env = dict(os.environ)
            inherited = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") and not self.python else []
            env.pop("PYTHONPATH", None)
            paths = [*self.python_path, *inherited]
            if paths:
                env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
            env["PYTHONUNBUFFERED"] = "1"
            cmd = [self.python or sys.executable, "-m", "pytest_greenserve", "serve", *self.serve_args, "--fd", str(sock.fileno()),
                   "--parent-pid", str(os.getpid())]
            if threading.current_thread() is not threading.main_thread():
                # Linux's parent-death signal follows the thread that forks: one that ends before
                # this process would take the server with it; the watchdog alone then
                cmd.append("--no-parent-death-signal")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         pass_fds=(sock.fileno(),), start_new_session=True, env=env)
            _LIVE.add(self)
        finally:
            sock.close()  # the child holds its own copy

    def exited(self) -> int | None:
        """The exit status if the child has ended (negative: killed by that signal), else None."""
        return None if self.proc is None else self.proc.poll()

    def wait_healthy(self, get_status: Callable[[str, float], int] | None = None) -> None:
        """Poll ``/health`` until it answers 200, through ``get_status(path, timeout_s) -> HTTP
        status`` (raising OSError or ``http.client.HTTPException`` when no answer comes), by
        default :meth:`get_status`."""
        get_status = get_status or self.get_status
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            code = self.exited()
            if code is not None:
                raise ServeError(f"{self.label} exited with status {code} before it became healthy; "
                                 f"log tail: {self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise ServeError(f"{self.label} did not become healthy within {self.health_timeout_s:g} s; "
                                 f"log tail: {self.log_tail()}")
            try:
                if get_status("/health", min(2.0, max(left, 0.05))) == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(min(0.05, max(left, 0)))

    def get_status(self, path: str, timeout_s: float) -> int:
        """The HTTP status of ``GET path``, on a connection of its own (closed after): a poll
        that timed out leaves nothing half-read behind."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def log_tail(self, lines: int = 6, chars: int = 600) -> str:
        """The last lines of the child's log, on one line (`` | `` between them)."""
        if self._log is not None:
            try:
                self._log.flush()
            except (OSError, ValueError):
                pass
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        tail = " | ".join(kept) or "(empty)"
        return tail if len(tail) <= chars else "..." + tail[-chars:]

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL to the whole group; reap the child."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.terminate()
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
                except OSError:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything the server started, and the server if still up
            except (ProcessLookupError, PermissionError, OSError):
                pass
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None

    def remove_log(self) -> None:
        if self.log_path is not None:
            try:
                self.log_path.unlink()
            except OSError:
                pass
            self.log_path = None
