"""Lightning callbacks and the checkpoint IO plugin: checkpoints, TensorBoard pictures, EMA, throughput."""
