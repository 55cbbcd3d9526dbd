"""The real-model example: SmolLM2-135M-Instruct from a GGUF file, reasoning-gym arithmetic and HumanEval (build.py, demo.py)."""
