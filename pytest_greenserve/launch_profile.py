"""Kernels and launch calls per token, counted in a child process.

The launch floor of the roofline needs a profile of one generation (``roofline.count_launches``:
the PyTorch profiler over CUPTI). CUPTI stays attached to a process after the profiler stops
(Kineto does not finalise it unless ``TEARDOWN_CUPTI=1``; pytorch/pytorch#144455), and every
later kernel launch pays for it: on an H100, torch-cuda on the codeparrot-small replica went
from 6.6-9.0 ms/token before one profiled generation to 8.4-11.0 after it, in the same process.
So the measuring process never profiles: a child loads the same engine class on the same model
handle with the same options, warms it up, profiles one generation, prints the counts as one
JSON line and exits.

    python -m pytest_greenserve.launch_profile --request-json '{...}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Sequence

from .engines.base import EngineOptions, failure_line
from .handle import ModelHandle

#: a child that loads a 3 B model and compiles it may take minutes; beyond this, no count
DEFAULT_TIMEOUT_S = 900.0


def _options_to_json(options: EngineOptions) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.name not in ("progress", "extra")}


def profile_in_child(engine_cls, handle: ModelHandle, provider: str, options: EngineOptions,
                     prompt_ids: Sequence[int], new_tokens: int, timeout_s: float = DEFAULT_TIMEOUT_S):
    """The :class:`roofline.LaunchCount` of one generation of ``prompt_ids``, profiled in a
    child process. Raises RuntimeError with a one-line reason when it cannot be had."""
    from .roofline import LaunchCount
    from .serving.server import ServeError, engine_class_ref, handle_to_json

    try:
        ref, root = engine_class_ref(engine_cls)
    except ServeError as exc:
        raise RuntimeError(str(exc)) from None
    request = {"engine_class": ref, "handle": handle_to_json(handle), "provider": provider,
               "options": _options_to_json(options), "prompt_ids": list(prompt_ids), "new_tokens": new_tokens}
    env = dict(os.environ)
    path = [p for p in (root, *sys.path) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest_greenserve.launch_profile", "--request-json",
                               json.dumps(request)], capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the profiling child ran past {timeout_s:g} s") from None
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"the profiling child failed: {last}")
    data = json.loads(line)
    if "error" in data:
        raise RuntimeError(data["error"])
    return LaunchCount(**data)


def _child(request: dict) -> dict:
    from .roofline import count_launches
    from .serving.server import handle_from_json, import_engine_class

    cls = import_engine_class(request["engine_class"])
    engine = cls(handle_from_json(request["handle"]), request["provider"], EngineOptions(**request["options"]))
    prompt, new_tokens = request["prompt_ids"], request["new_tokens"]
    try:
        engine.load()
        for _ in range(2):  # as the runner's warm-up: one-off work (captures, autotuning) is not counted
            engine.generate(prompt, new_tokens)
        counted = count_launches(lambda: engine.generate(prompt, new_tokens), new_tokens)
    except Exception as exc:  # the parent needs one line
        return {"error": failure_line("roofline: launches not counted", exc)}
    finally:
        try:
            engine.close()
        except Exception:
            pass
    return dataclasses.asdict(counted)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_greenserve.launch_profile")
    p.add_argument("--request-json", required=True)
    args = p.parse_args(argv)
    print(json.dumps(_child(json.loads(args.request_json))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
