"""Stage names of the MNIST and specialist recipes, importable without torch (for the CLI), and
the specialist recipe's stage graph, read both by its stages (:mod:`asr_kd.experiments.specialists`)
and by its RESULTS.md writer (:mod:`asr_kd.experiments.specialists_report`)."""

MNIST_STAGES = ("prepare", "teacher", "small", "distill", "omit", "transfer", "seeds")
SPECIALIST_STAGES = ("prepare", "generalist", "clusters", "specialists", "longer", "combine")

# The upstream stages each specialists stage reads; their record fingerprints are the stage's inputs.
SPECIALIST_INPUTS: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "generalist": ("prepare",),
    "clusters": ("generalist",),
    "specialists": ("prepare", "generalist", "clusters"),
    "longer": ("prepare", "generalist", "specialists"),
    "combine": ("prepare", "generalist", "clusters", "specialists"),
}
# Upstream stages read when they have finished: combine compares with the control when it ran.
SPECIALIST_OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {"combine": ("longer",)}
