"""Recipe stages: one module per stage of recipes/librispeech/run.sh, holding its orchestration,
its provenance record (config + input fingerprints, :mod:`asr_kd.stages.provenance`) and its
RESULTS.md section. The only code that knows folder names, through
:class:`asr_kd.stages.layout.RecipeLayout`. Library packages (data, lang, gmm, kd, ctc, decode,
train, ...) never import from here.
"""
