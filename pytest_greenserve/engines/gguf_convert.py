"""Run llama.cpp's own converter (``convert_hf_to_gguf.py``) on a Hugging Face model directory.

Run in a child process by the ``llamacpp`` engine::

    python -m pytest_greenserve.engines.gguf_convert LLAMA_CPP_DIR MODEL_DIR OUT.gguf f16
    python -m pytest_greenserve.engines.gguf_convert quantize IN.gguf OUT.gguf q8_0

(the second: llama.cpp's quantiser, ``llama_model_quantize`` through llama-cpp-python).

``LLAMA_CPP_DIR`` holds ``convert_hf_to_gguf.py``, its ``conversion/`` package and ``gguf-py/``
(llama.cpp's source tree, or the copy ``tools/install_llamacpp.sh`` takes from the
llama-cpp-python sdist). Two things the converter needs are bridged here, and nothing else:

* **an unrecognised BPE pre-tokenizer.** The converter hashes the tokenizer's output on a test
  string to name its pre-tokenizer, and refuses tokenizers it has not seen (the ``mini-*``
  models' tokenizer, trained offline for this project, is one). The name only tells llama.cpp
  how to split *text*; this project sends token ids, so an unknown byte-level BPE is written
  as ``gpt-2`` (what its ByteLevel regex split is) and the converter's result otherwise kept.
  Known tokenizers (the paper's models') are named by the converter as usual.
* **GPT-2's** ``n_ctx``, which the converter reads and transformers no longer writes to
  config.json: a copy of the config with ``n_ctx = n_positions`` is staged next to links to
  the weights.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

#: the pre-tokenizer name written for a byte-level BPE the converter does not recognise
FALLBACK_PRE_TOKENIZER = "gpt-2"


def staged_model_dir(model_dir: Path, scratch: Path) -> Path:
    """``model_dir``, or a staged copy of it whose config has what the converter reads."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "gpt2" or "n_ctx" in config:
        return model_dir
    config["n_ctx"] = config.get("n_positions", 1024)
    for item in model_dir.iterdir():
        if item.name != "config.json":
            os.symlink(item.resolve(), scratch / item.name)
    (scratch / "config.json").write_text(json.dumps(config))
    return scratch


def patch_pre_tokenizer_fallback() -> None:
    """Name an unrecognised byte-level BPE pre-tokenizer ``gpt-2`` instead of failing."""
    from conversion import base  # llama.cpp's converter package (on sys.path)

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("gguf_convert").warning(
                "pre-tokenizer not recognised; written as %r (prompts are sent as token ids)", FALLBACK_PRE_TOKENIZER)
            return FALLBACK_PRE_TOKENIZER

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


#: llama.cpp's file types by the name used in configuration labels
QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize(source: str, out: str, variant: str) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[variant])
    return llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))


def main(argv: list[str]) -> int:
    if argv[:1] == ["quantize"]:
        return quantize(*argv[1:])
    llama_cpp_dir, model_dir, outfile, outtype = argv
    llama_cpp_dir = str(Path(llama_cpp_dir).resolve())
    sys.path[:0] = [llama_cpp_dir, str(Path(llama_cpp_dir) / "gguf-py")]
    os.environ["NO_LOCAL_GGUF"] = "1"  # gguf-py is on sys.path already
    import convert_hf_to_gguf  # noqa: E402  (llama.cpp's script, as a module)

    patch_pre_tokenizer_fallback()
    with tempfile.TemporaryDirectory() as scratch:
        source = staged_model_dir(Path(model_dir), Path(scratch))
        sys.argv = ["convert_hf_to_gguf.py", str(source), "--outfile", outfile, "--outtype", outtype]
        convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
