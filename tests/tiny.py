"""The tiny example shrunk further for tests that run it for real: same code path, a fraction of the time."""

FAST_OVERRIDES = [
    "selfPlay.teacher.groupSize=2",
    "selfPlay.teacher.upscaleRatio=2",
    "selfPlay.teacher.sampling.maxTokens=64",
    "selfPlay.student.samples=3",
    "selfPlay.student.sampling.maxTokens=64",
    "training.saveEvery=1",
    "training.maxConsecutiveSkips=3",
]
"""``--set`` overrides of examples/tiny-cpu.yaml."""
