"""Local Hugging Face ``evaluate`` modules, loaded by path because the Hub is unreachable."""
