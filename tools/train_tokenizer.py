"""Train the project's byte-level BPE on Python's standard library (offline, ~1 s).

    python tools/train_tokenizer.py  # writes pytest_greenserve/data/tokenizer/tokenizer.json

Replicas and mini models use this tokenizer; its 2048 ids lie inside every model's vocabulary.
"""

import sysconfig
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer

VOCAB_SIZE = 2048
OUT = Path(__file__).resolve().parent.parent / "pytest_greenserve" / "data" / "tokenizer"


def main():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in stdlib.glob("*.py"))[:400]
    tok = ByteLevelBPETokenizer()
    tok.train(files, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=["<|endoftext|>", "<pad>"])
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    print(f"trained on {len(files)} files -> {OUT / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
