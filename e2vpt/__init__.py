"""e2vpt: Effective and Efficient Visual Prompt Tuning (ICCV 2023) as a library, a CLI and an app."""

__version__ = "0.1.0"
