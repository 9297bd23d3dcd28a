"""GMM-HMM acoustic models: topology, features, our own decision tree, training and alignment.

Modules: ``topology`` (Kaldi HMM topologies), ``features`` (deltas, CMVN), ``tree`` (the
decision tree and its Kaldi serialisation), ``questions`` (phone sets for the tree), ``align``
(training graphs, alignment and what is read from alignments), ``mixup`` (adding Gaussians),
``train`` (monophone and triphone EM), ``toy`` (a toy language and synthetic corpus).
"""
