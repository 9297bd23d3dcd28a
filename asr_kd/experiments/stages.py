"""Stage names of the MNIST and specialist recipes, importable without torch (for the CLI)."""

MNIST_STAGES = ("prepare", "teacher", "small", "distill", "omit", "transfer", "seeds")
SPECIALIST_STAGES = ("prepare", "generalist", "clusters", "specialists", "longer", "combine")
