# Root conftest of the pytest-greenserve repository. The plugin itself is loaded through its
# pytest11 entry point; this file only keeps runs here quiet and offline-friendly.
import os

# The Hugging Face libraries phone home unless told not to; measurements should not pay for it.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
