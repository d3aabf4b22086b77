import os

# No hub access here: fail fast instead of retrying for ~25 s (shared/notes/STACK.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
