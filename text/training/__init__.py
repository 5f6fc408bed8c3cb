"""Training the text models: objectives and held-out likelihoods (`objectives`), and the
run recipe (`train`)."""
