# Why: issue 4's benchmarks as one package (run by scripts/bench), never as timed tests.
