"""Lightning callbacks and plugins: run safety (guards), TensorBoard pictures (dashboards, figures), EMA, timing."""
