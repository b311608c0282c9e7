"""The codec endpoint: the Temporal Web UI (and `temporal --codec-endpoint`) decrypts payloads here."""
