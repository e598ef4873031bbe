"""minictr: a daemonless container launcher. image → plan (OCI runtime spec) → runtime."""

__version__ = "0.1.0"
